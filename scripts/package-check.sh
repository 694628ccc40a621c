#!/usr/bin/env bash
# lwtun as crates.io would ship it, built where no BPF toolchain is: with a PATH that has no
# clang, llvm, lld or rustfmt, runs `cargo package` (which builds the packaged crate), `cargo publish
# --dry-run`, then builds scripts/outside-crate, a crate with the unpacked package as its only
# dependency, and runs it (as root: it creates a network namespace and installs an LWT route there).
# Without root the run is skipped; with CI=true or LWTUN_REQUIRE_PRIV=1 that fails instead.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

work=$(mktemp -d /tmp/lwtun-package.XXXXXX)
trap 'rm -rf "$work"' EXIT

# Every command on PATH but the BPF toolchain.
nobpf=$work/path
mkdir "$nobpf"
IFS=: read -ra dirs <<<"$PATH"
for dir in "${dirs[@]}"; do
  [ -d "$dir" ] || continue
  for f in "$dir"/*; do
    [ -f "$f" ] && [ -x "$f" ] || continue
    name=${f##*/}
    case "$name" in clang* | llvm* | *lld* | bpftool | rustfmt | cargo-fmt) continue ;; esac
    [ -e "$nobpf/$name" ] || ln -s "$f" "$nobpf/$name"
  done
done
if PATH=$nobpf command -v clang >/dev/null; then
  echo "package-check: clang is still on the reduced PATH" >&2
  exit 1
fi
echo "package-check: building with PATH=$nobpf (no clang, llvm, lld, bpftool or rustfmt)"
nobpf_env=(env -u CLANG PATH="$nobpf")

# A fresh clone (CI) must package as it is; a work tree being edited may be dirty.
dirty=()
[ "${CI:-}" = true ] || dirty=(--allow-dirty)
"${nobpf_env[@]}" cargo package "${dirty[@]}"
# The archive was just built and verified; the dry run checks the manifest for publishing.
"${nobpf_env[@]}" cargo publish --dry-run --no-verify "${dirty[@]}"

version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
crate=target/package/lwtun-$version.crate
tar -xzf "$crate" -C "$work"
mv "$work/lwtun-$version" "$work/lwtun"
for f in bpf/obj/lwt_count.bpf.o bpf/obj/lwt_count.skel.rs bpf/obj/lwt_count.inputs; do
  [ -f "$work/lwtun/$f" ] || { echo "package-check: $f is not in $crate" >&2; exit 1; }
done
cp -r scripts/outside-crate "$work/outside"
# The versions lwtun is tested with, so the build reuses target/outside from the last run.
[ -f "$work/lwtun/Cargo.lock" ] && cp "$work/lwtun/Cargo.lock" "$work/outside/Cargo.lock"

(cd "$work/outside" && "${nobpf_env[@]}" CARGO_TARGET_DIR="$root/target/outside" cargo build)
bin=$root/target/outside/debug/lwtun-outside

if [ "$(id -u)" -ne 0 ]; then
  if [ "${CI:-}" = true ] || [ "${LWTUN_REQUIRE_PRIV:-}" = 1 ]; then
    echo "package-check: running the outside crate needs root" >&2
    exit 1
  fi
  echo "SKIPPED package-check run: needs root (the outside crate built)"
  exit 0
fi
"$bin"
echo "package-check: the packaged lwtun builds without clang and its LWT route works"
