#!/usr/bin/env bash
# The public API against the last release: cargo-semver-checks (a well-kept tool, the one the
# Rust project's own release checks use) compares lwtun's API with the last release and fails on
# a break the version number does not allow: within 0.2.x nothing may break; a break needs the
# next minor version (0.3.0) and its entry in CHANGELOG.md.
#
# The baseline is the release's tag when the clone has it (built here, with this toolchain).
# A clone without tags or history (CI's clean clone has none) uses the release's rustdoc JSON
# kept in semver/, written by `scripts/semver-check.sh --write-baseline` from the tag, with the
# flags cargo-semver-checks itself uses.
# Installs the tool (a fixed version, --locked) when it is missing: a few minutes, once.
set -euo pipefail
cd "$(dirname "$0")/.."
release=v0.2.0
kept=semver/lwtun-${release#v}.rustdoc.json.gz
tool=0.51.0
have_tag() { git rev-parse -q --verify "refs/tags/$release^{commit}" >/dev/null 2>&1; }

if [ "${1:-}" = --write-baseline ]; then
  have_tag || { echo "semver-check: --write-baseline needs the tag $release" >&2; exit 1; }
  tree=$(mktemp -d)
  trap 'git worktree remove --force "$tree" 2>/dev/null; rm -rf "$tree"' EXIT
  git worktree add -q --detach "$tree" "$release"
  (cd "$tree" && RUSTC_BOOTSTRAP=1 CARGO_TARGET_DIR="$tree/target" cargo rustdoc -q -p lwtun --lib -- \
    -Z unstable-options --document-private-items --document-hidden-items \
    --output-format=json --cap-lints=allow)
  mkdir -p semver
  gzip -9c "$tree/target/doc/lwtun.json" >"$kept"
  echo "semver-check: wrote $kept"
  exit 0
fi

if ! cargo semver-checks --version 2>/dev/null | grep -qF "$tool"; then
  echo "semver-check: installing cargo-semver-checks $tool (once)"
  cargo install cargo-semver-checks --version "$tool" --locked
fi
if have_tag; then
  exec cargo semver-checks check-release -p lwtun --baseline-rev "$release"
fi
if [ ! -f "$kept" ]; then
  echo "semver-check: this clone has no tag $release and no $kept (git fetch --tags)" >&2
  exit 1
fi
echo "semver-check: no tag $release in this clone; baseline from $kept"
json="target/semver-baseline/lwtun-${release#v}.json"
mkdir -p "$(dirname "$json")"
gzip -dc "$kept" >"$json"
cargo semver-checks check-release -p lwtun --baseline-rustdoc "$json"
