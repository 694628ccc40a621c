#!/usr/bin/env bash
# Runs the test binaries listed in LIST ("name path" lines) with CI=true --test-threads=1,
# each binary's output to OUT/NAME.log and its test list to OUT/NAME.list. Called by
# scripts/kernel-matrix.sh on the host (COLUMN "host": it changes nothing on the host) and as
# the command of each VM, where it first prepares the guest as lwtun's tests expect a machine
# to be: bpffs, /run/netns, /dev/net/tun, no fallback tunnel devices in new namespaces, and the
# kernel's config where libbpf looks for it (/boot/config-RELEASE, on a tmpfs).
#
#   kernel-matrix-guest.sh LIST OUT COLUMN [bench]
#
# With "bench", LIST names bench binaries (harness = false): each runs once, without
# arguments, with the LWTUN_BENCH_* variables of LIST's folder's bench.env.
set -uo pipefail
list=$1 out=$2 column=$3 mode=${4:-test}
mkdir -p "$out"
if [ "$column" != host ]; then
  cache=$(sed -n 's/^cache=//p' "$(dirname "$list")/env")
  mount | grep -q ' /sys/fs/bpf type bpf' || mount -t bpf bpf /sys/fs/bpf
  mkdir -p /run/netns
  # ipip/gre modules would otherwise give every new namespace tunl0/gre0/erspan0.
  sysctl -qw net.core.fb_tunnels_only_for_init_net=1
  # The kernel's modules from the unpacked package (virtme-ng's own link to them is not
  # found by modprobe here), so that modprobe and the kernel's on-demand loading find them.
  mods=/lib/modules/$(uname -r)
  [ -e "$mods/modules.dep" ] || {
    rm -f "$mods" 2>/dev/null
    mkdir -p "$mods"
    mount --bind "$cache/$column/lib/modules/$(uname -r)" "$mods"
  }
  # What the tests create, loaded up front.
  for m in tun veth vxlan macvlan bridge sch_ingress cls_bpf ipip ip_gre ip6_tunnel ip6_gre \
    fou fou6 sit dummy vrf; do
    modprobe "$m" 2>/dev/null
  done
  mount -t tmpfs tmpfs /boot
  cp "$cache/$column/boot/config-$(uname -r)" /boot/ 2>/dev/null
  {
    echo "kernel $(uname -r)"
    echo "modules $(lsmod | awk 'NR > 1 {print $1}' | sort | tr '\n' ' ')"
  } >"$out/guest-info"
fi
export CI=true
# Waits on the kernel may take this many times longer (qemu's TCG emulation runs 10-50x
# slower than the host); tests assert what arrives, never how fast.
[ "$column" = host ] || export LWTUN_TEST_TIME_SCALE=${LWTUN_TEST_TIME_SCALE:-10}
# A binary gets this long before it is stopped (TCG runs everything many times slower).
limit=${LWTUN_MATRIX_BINARY_TIMEOUT:-1500}
if [ "$mode" = bench ]; then
  # shellcheck disable=SC1091
  . "$(dirname "$list")/bench.env"
  while read -r name exe; do
    timeout "$limit" "$exe" >"$out/$name.log" 2>&1
    echo "exit $? " >>"$out/$name.log"
  done <"$list"
  sync
  exit 0
fi
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
