#!/usr/bin/env bash
# Installs what lwtun's build, tests and demos need on a fresh Debian 12 machine, and mounts bpffs.
# Safe to run again: it installs only what is missing. Needs root (apt-get, mount).
set -euo pipefail

packages=(clang llvm libelf-dev zlib1g-dev libpcap-dev pkg-config make gcc iproute2 iputils-ping tcpdump bpftool iperf3 util-linux procps strace
  # the fleet agent (agent/): etcd for its tests; protoc and the well-known .proto files for
  # the etcd-client crate's build
  etcd-server protobuf-compiler libprotobuf-dev)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # etcd-server's package would start a host etcd on the default ports: the agent's tests start
  # their own on free loopback ports, so no service is started while installing (policy-rc.d
  # 101 = "action forbidden", only for this install and only if none is in place).
  policy=
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    policy=/usr/sbin/policy-rc.d
    printf '#!/bin/sh\nexit 101\n' >"$policy"
    chmod +x "$policy"
    trap 'rm -f "$policy"' EXIT
  fi
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  [ -z "$policy" ] || rm -f "$policy"
fi
# ...and a host etcd service installed before is stopped and disabled (never any other etcd).
if [ -d /run/systemd/system ] && systemctl is-active --quiet etcd.service 2>/dev/null; then
  echo "setup: stopping and disabling the host's etcd.service (the tests run their own)"
  systemctl disable --now etcd.service
elif [ -x /etc/init.d/etcd ] && /etc/init.d/etcd status >/dev/null 2>&1; then
  echo "setup: stopping the host's /etc/init.d/etcd (the tests run their own)"
  /etc/init.d/etcd stop
  update-rc.d etcd disable >/dev/null 2>&1 || true
fi

# libbpf pins and `ip route ... encap bpf ... pinned` need bpffs (iproute2 mounts it the same way).
if ! mount | grep -q ' /sys/fs/bpf type bpf'; then
  mount -t bpf bpf /sys/fs/bpf
fi
# Named namespaces live here, like `ip netns add` makes them.
mkdir -p /run/netns

command -v cargo >/dev/null || { echo "setup: cargo not found: install Rust (rustup) first" >&2; exit 1; }
