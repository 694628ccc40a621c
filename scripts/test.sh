#!/usr/bin/env bash
# The whole check: set-up, format, lints, then every test (unit, golden bytes, privileged
# end-to-end tests in their own network namespaces, doc tests), then the kernel matrix.
# As root every privileged test runs; with CI=true or LWTUN_REQUIRE_PRIV=1 a privileged test that
# cannot run fails instead of skipping.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
cargo fmt --all -- --check
# imports only run down the crate's layers, and no program family imports another
./scripts/layers.py
cargo clippy --all-targets -- -D warnings
cargo clippy --all-targets --features tokio -- -D warnings
# the fleet agent is a workspace member of its own (the commands above cover the root package)
cargo clippy -p lwtun-agent --all-targets -- -D warnings
# the API docs build without a warning (broken or redundant intra-doc links, bad HTML)
RUSTDOCFLAGS="-D warnings" cargo doc --no-deps
RUSTDOCFLAGS="-D warnings" cargo doc --no-deps --features tokio
# the public API keeps semver against the last release (the v0.2.0 tag)
./scripts/semver-check.sh
# the agent binary tests/cli_owner.rs runs against a live agent (beside the lwtun binary)
cargo build -p lwtun-agent --bin lwtun-agent
cargo test --lib --bins --tests --examples
# the async layer (tokio feature, off by default): its tests and the tokio example's self-test
cargo test --features tokio --test async_api --test send_sync
cargo run --quiet --features tokio --example tokio_peers -- --once
cargo test --doc --features tokio
# the fleet agent: unit and doc tests, and the five-host test against a real etcd
cargo test -p lwtun-agent
# the shipped BPF objects are what bpf/ compiles to (else: run ./scripts/bpf-objects.sh)
./scripts/bpf-objects.sh --check
# the packaged crate builds without clang and a crate depending on it runs an LWT route
./scripts/package-check.sh
./scripts/msrv-check.sh
# the privileged test binaries on Debian's 5.10, 6.1 and 6.12 kernels in VMs (a curated set;
# --full runs them all) and the coverage table: fails when a test failed on any kernel or
# passed on none
./scripts/kernel-matrix.sh
