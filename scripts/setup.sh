#!/usr/bin/env bash
# Installs what lwtun's build, tests and demos need on a fresh Debian 12 machine, and mounts bpffs.
# Safe to run again: it installs only what is missing. Needs root (apt-get, mount).
set -euo pipefail

packages=(clang llvm libelf-dev zlib1g-dev libpcap-dev pkg-config make gcc iproute2 iputils-ping tcpdump bpftool iperf3 util-linux procps strace)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# libbpf pins and `ip route ... encap bpf ... pinned` need bpffs (iproute2 mounts it the same way).
if ! mount | grep -q ' /sys/fs/bpf type bpf'; then
  mount -t bpf bpf /sys/fs/bpf
fi
# Named namespaces live here, like `ip netns add` makes them.
mkdir -p /run/netns

command -v cargo >/dev/null || { echo "setup: cargo not found: install Rust (rustup) first" >&2; exit 1; }
