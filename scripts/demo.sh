#!/usr/bin/env bash
# The main demo: two hosts and a router in namespaces, lwtun tunnels between the hosts (GRE with
# a key, IP-in-IP and UDP/FOU chosen per prefix by the peer table, BPF decap at tc ingress), ping
# and TCP through them, peers with their counters, then everything removed.
# The LWT route demo is `cargo run --example lwt_route`.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
cargo run --quiet --example tunnel
