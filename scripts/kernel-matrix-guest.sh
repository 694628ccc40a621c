#!/usr/bin/env bash
# Runs the test binaries listed in LIST ("name path" lines) with CI=true --test-threads=1,
# each binary's output to OUT/NAME.log and its test list to OUT/NAME.list. Called by
# scripts/kernel-matrix.sh on the host (COLUMN "host": it changes nothing on the host) and as
# the command of each VM, where it first prepares the guest as lwtun's tests expect a machine
# to be: bpffs, /run/netns, /dev/net/tun, no fallback tunnel devices in new namespaces, and the
# kernel's config where libbpf looks for it (/boot/config-RELEASE, on a tmpfs).
#
#   kernel-matrix-guest.sh LIST OUT COLUMN
set -uo pipefail
list=$1 out=$2 column=$3
mkdir -p "$out"
if [ "$column" != host ]; then
  cache=$(sed -n 's/^cache=//p' "$(dirname "$list")/env")
  mount | grep -q ' /sys/fs/bpf type bpf' || mount -t bpf bpf /sys/fs/bpf
  mkdir -p /run/netns
  modprobe tun 2>/dev/null
  # ipip/gre modules would otherwise give every new namespace tunl0/gre0/erspan0.
  sysctl -qw net.core.fb_tunnels_only_for_init_net=1
  mount -t tmpfs tmpfs /boot
  cp "$cache/$column/boot/config-$(uname -r)" /boot/ 2>/dev/null
  {
    echo "kernel $(uname -r)"
    nproc
  } >"$out/guest-info"
fi
export CI=true
# A binary gets this long before it is stopped (TCG runs everything many times slower).
limit=${LWTUN_MATRIX_BINARY_TIMEOUT:-1500}
while read -r name exe; do
  [ -n "$name" ] || continue
  "$exe" --list >"$out/$name.list" 2>/dev/null
  start=$(date +%s)
  timeout "$limit" "$exe" --test-threads=1 >"$out/$name.log" 2>&1
  rc=$?
  echo "exit $rc after $(($(date +%s) - start)) s" >>"$out/$name.log"
  echo "kernel-matrix [$column]: $name exit $rc ($(($(date +%s) - start)) s)"
done <"$list"
sync
