#!/usr/bin/env bash
# Ships the compiled BPF: compiles every bpf/*.bpf.c with this machine's clang and generates its
# skeleton with libbpf-cargo (through build.rs, with the rebuild-bpf feature, in a target folder
# of its own so the main one is not rebuilt) and writes the objects, skeletons and their records
# to bpf/obj/, so that a build of lwtun needs nothing but cargo. Run it after changing anything in bpf/, and
# after a merge that touched bpf/ (on a conflict in bpf/obj/, take either side, then run it).
#
#   ./scripts/bpf-objects.sh           regenerate bpf/obj/
#   ./scripts/bpf-objects.sh --check   fail, naming what differs, when bpf/obj/ is not what bpf/
#                                      compiles to (scripts/test.sh runs this)
set -euo pipefail
cd "$(dirname "$0")/.."

mode=write
case "${1:-}" in
  "") ;;
  --check) mode=check ;;
  *) echo "usage: $0 [--check]" >&2; exit 2 ;;
esac

command -v clang >/dev/null || { echo "bpf-objects: clang not found (./scripts/setup.sh installs it)" >&2; exit 1; }

# build.rs prints where it wrote the objects in the build-script-executed message.
json=$(CARGO_TARGET_DIR=target/bpf-objects cargo check --lib --quiet --features rebuild-bpf --message-format=json)
out=$(grep '"reason":"build-script-executed"' <<<"$json" | grep '#lwtun@' |
  sed -n 's/.*"out_dir":"\([^"]*\)".*/\1/p' | tail -1)
[ -n "$out" ] && [ -d "$out" ] || { echo "bpf-objects: cargo did not report lwtun's OUT_DIR" >&2; exit 1; }

wanted=()
for src in bpf/*.bpf.c; do
  stem=$(basename "$src" .bpf.c)
  wanted+=("$stem.bpf.o" "$stem.skel.rs" "$stem.inputs")
done

if [ "$mode" = check ]; then
  differ=()
  for f in "${wanted[@]}"; do
    cmp -s "$out/$f" "bpf/obj/$f" || differ+=("bpf/obj/$f")
  done
  for f in bpf/obj/*; do
    [ -e "$f" ] || continue
    name=$(basename "$f")
    printf '%s\n' "${wanted[@]}" | grep -qxF "$name" || differ+=("$f (no source)")
  done
  if [ ${#differ[@]} -gt 0 ]; then
    echo "bpf-objects: the shipped BPF objects are not what bpf/ compiles to with $(clang --version | head -1):" >&2
    printf '  %s\n' "${differ[@]}" >&2
    echo "run ./scripts/bpf-objects.sh and commit bpf/obj/" >&2
    exit 1
  fi
  echo "bpf-objects: bpf/obj/ matches bpf/ (${#wanted[@]} files, $(clang --version | head -1))"
  # The example user object (built on bpf/chain.h, so a change there can change it too).
  examples/own/build.sh --check
  exit 0
fi

mkdir -p bpf/obj
rm -f bpf/obj/*.bpf.o bpf/obj/*.skel.rs bpf/obj/*.inputs
for f in "${wanted[@]}"; do
  cp "$out/$f" "bpf/obj/$f"
done
echo "bpf-objects: wrote ${#wanted[@]} files to bpf/obj/ ($(clang --version | head -1)); commit them"
examples/own/build.sh
