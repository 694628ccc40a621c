#!/usr/bin/env bash
# The main demo: two hosts and a router in namespaces, an LWT BPF route installed by lwtun,
# traffic through it, the route as lwtun and iproute2 see it, then everything removed.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
cargo run --quiet --example lwt_route
