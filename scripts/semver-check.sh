#!/usr/bin/env bash
# The public API against the last release: cargo-semver-checks (a well-kept tool, the one the
# Rust project's own release checks use) compares lwtun's API with the tag of the last release
# and fails on a break the version number does not allow: within 0.2.x nothing may break; a
# break needs the next minor version (0.3.0) and its entry in CHANGELOG.md.
# Installs the tool (a fixed version, --locked) when it is missing: a few minutes, once.
set -euo pipefail
cd "$(dirname "$0")/.."
release=v0.2.0
tool=0.51.0
if ! cargo semver-checks --version 2>/dev/null | grep -qF "$tool"; then
  echo "semver-check: installing cargo-semver-checks $tool (once)"
  cargo install cargo-semver-checks --version "$tool" --locked
fi
if ! git rev-parse -q --verify "refs/tags/$release^{commit}" >/dev/null; then
  # A shallow clone has only the tags of the commits it holds: fetch the release's.
  git fetch -q --tags origin "refs/tags/$release:refs/tags/$release" 2>/dev/null || true
fi
if ! git rev-parse -q --verify "refs/tags/$release^{commit}" >/dev/null; then
  echo "semver-check: this clone has no tag $release and cannot fetch it (git fetch --tags)" >&2
  exit 1
fi
cargo semver-checks check-release -p lwtun --baseline-rev "$release"
