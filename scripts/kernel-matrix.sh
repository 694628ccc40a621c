#!/usr/bin/env bash
# The kernel matrix: lwtun's privileged test binaries on the kernels people run, each booted in
# a VM over this machine's root filesystem, and on the host; ends with a coverage table
# (test x kernel -> pass / FAIL / skipped (reason)) and one line
#   kernel-matrix: T tests x K kernels: F failed, U never passed on any kernel
# that fails the run when F or U is not 0.
#
#   ./scripts/kernel-matrix.sh            the curated set (what CI runs)
#   ./scripts/kernel-matrix.sh --full     every test binary
#   ./scripts/kernel-matrix.sh --kernels "6.1 6.12" --tests "probe tunnel_test_run"
#   ./scripts/kernel-matrix.sh --prepare  only install the tools and unpack the kernels
#   ./scripts/kernel-matrix.sh --bench tunnel --kernels 6.12
#                                         runs benches/tunnel.rs in the VMs instead (its
#                                         LWTUN_BENCH_* variables travel along) and prints
#                                         its tables; no test runs, no coverage table
#
# What it installs by itself (Debian 12): qemu-system-x86, busybox-static, udev, kmod,
# python3-venv; virtme-ng from PyPI in a venv; Debian's own kernel images (bullseye's 5.10,
# bookworm's 6.1 and 6.12), resolved to the newest ABI at run time, downloaded with apt-get and
# unpacked with dpkg -x under the cache folder ($LWTUN_KERNEL_CACHE, default
# /var/lib/lwtun-kernels). Nothing goes into /boot or the host's module tree.
#
# The VMs use qemu's TCG emulation (this machine's /dev/kvm cannot boot stock kernels), one
# after another, 2 CPUs and 3 GiB each. The test binaries are built once, on the host; inside a
# VM they run with CI=true --test-threads=1 from scripts/kernel-matrix-guest.sh. A test that
# returns early because the kernel lacks a feature prints "SKIPPED NAME (kernel lacks ...)",
# which the table shows as skipped with the reason.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

full=0
prepare=0
kernels="5.10 6.1 6.12"
only=""
bench=""
while [ $# -gt 0 ]; do
  case "$1" in
    --full) full=1 ;;
    --prepare) prepare=1 ;;
    --kernels) kernels=$2; shift ;;
    --tests) only=$2; shift ;;
    --bench) bench=$2; shift ;;
    *) echo "usage: $0 [--full | --prepare | --bench NAME] [--kernels \"5.10 6.1 6.12\"] [--tests \"BIN ...\"]" >&2; exit 2 ;;
  esac
  shift
done

# The curated set: every test binary that verifies or test-runs programs (fast, where older
# kernels differ most), a few that send traffic through namespaces, and those whose kernel
# modules only the VMs have (interop with the kernel's own tunnels, redirects into collect_md
# gre/ipip devices): they skip on a host without them, and must pass somewhere.
curated="probe route tunnel_test_run decap_test_run seg6_test_run xdp_programs tc_attach interop tc_redirect pin_protocol"
if [ -n "$only" ]; then
  wanted=$only
elif [ "$full" = 1 ]; then
  wanted=""
else
  wanted=$curated
fi

# A VM gets this long before it is stopped: the curated set takes 5-12 minutes a kernel
# unloaded, every binary about 30 (more on a loaded machine).
if [ "$full" = 1 ]; then vm_limit=${LWTUN_MATRIX_VM_TIMEOUT:-7200}; else vm_limit=${LWTUN_MATRIX_VM_TIMEOUT:-2400}; fi

[ "$(id -u)" -eq 0 ] || { echo "kernel-matrix: needs root (it installs packages and runs privileged tests)" >&2; exit 1; }

# Not under /var/cache, /var/tmp or /tmp: virtme-ng gives the guest fresh tmpfs there.
cache=${LWTUN_KERNEL_CACHE:-/var/lib/lwtun-kernels}
mkdir -p "$cache"

# ---- tools ----
need=()
for p in qemu-system-x86 busybox-static udev kmod python3-venv; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || need+=("$p")
done
if [ ${#need[@]} -gt 0 ]; then
  echo "kernel-matrix: installing ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
venv=$cache/venv
if [ ! -x "$venv/bin/vng" ]; then
  echo "kernel-matrix: installing virtme-ng in $venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q "virtme-ng==1.42"
fi

# ---- kernels ----
# Newest package of a name pattern, asked of apt with an optional sources list of its own.
newest() { # PATTERN [APT-OPTIONS...]
  local pattern=$1
  shift
  apt-cache "$@" search --names-only "$pattern" 2>/dev/null | awk '{print $1}' | sort -V | tail -1
}
bullseye_opts() {
  local d=$cache/apt-bullseye
  mkdir -p "$d/lists/partial" "$d/cache/archives/partial"
  cat >"$d/sources.list" <<SRC
deb http://deb.debian.org/debian bullseye main
deb http://deb.debian.org/debian-security bullseye-security main
SRC
  echo "-o Dir::Etc::SourceList=$d/sources.list -o Dir::Etc::SourceParts=/dev/null -o Dir::State::Lists=$d/lists -o Dir::Cache=$d/cache"
}
# Unpacks kernel K under $cache/K once; prints the vmlinuz path.
kernel_image() {
  local k=$1 pkg opts=() dir=$cache/$1
  if ! ls "$dir"/boot/vmlinuz-* >/dev/null 2>&1; then
    case "$k" in
      5.10)
        read -ra opts <<<"$(bullseye_opts)"
        apt-get "${opts[@]}" update -qq >/dev/null
        pkg=$(newest '^linux-image-5\.10\.0-[0-9]+-amd64$' "${opts[@]}")
        ;;
      6.1)
        [ -n "$(newest '^linux-image-6\.1\.0-[0-9]+-amd64$')" ] || apt-get update -qq >/dev/null
        pkg=$(newest '^linux-image-6\.1\.0-[0-9]+-amd64$')
        ;;
      6.12)
        [ -n "$(newest '^linux-image-6\.12\.[0-9]+\+deb12-amd64$')" ] || apt-get update -qq >/dev/null
        pkg=$(newest '^linux-image-6\.12\.[0-9]+\+deb12-amd64$')
        ;;
      *) echo "kernel-matrix: no recipe for kernel $k (5.10, 6.1, 6.12)" >&2; return 1 ;;
    esac
    [ -n "$pkg" ] || { echo "kernel-matrix: no Debian kernel package found for $k" >&2; return 1; }
    echo "kernel-matrix: downloading $pkg" >&2
    rm -rf "$dir" "$cache/dl-$k"
    mkdir -p "$cache/dl-$k"
    (cd "$cache/dl-$k" && apt-get "${opts[@]}" -o APT::Sandbox::User=root download -qq "$pkg" >/dev/null)
    dpkg -x "$cache/dl-$k"/*.deb "$dir"
    rm -rf "$cache/dl-$k"
  fi
  ls "$dir"/boot/vmlinuz-* | head -1
}

if [ "$prepare" = 1 ]; then
  for k in $kernels; do
    echo "kernel-matrix: $k: $(kernel_image "$k")"
  done
  exit 0
fi

# "name path" of every executable of target kind KIND (test, bench) in cargo's JSON messages.
executables() { # KIND
  python3 -c '
import json, sys
for line in sys.stdin:
    try:
        m = json.loads(line)
    except ValueError:
        continue
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["kind"] == [sys.argv[1]]:
        print(m["target"]["name"], m["executable"])
' "$1"
}

# ---- a bench in the VMs ----
if [ -n "$bench" ]; then
  echo "kernel-matrix: building bench $bench"
  exe=$(cargo bench --no-run --bench "$bench" --message-format=json 2>/dev/null | executables bench |
    awk '{print $2}')
  [ -n "$exe" ] || { echo "kernel-matrix: no bench named $bench" >&2; exit 1; }
  out=$(mktemp -d /tmp/lwtun-bench.XXXXXX)
  echo "cache=$cache" >"$out/env"
  echo "$bench $exe" >"$out/bins"
  for v in ${!LWTUN_BENCH_@}; do printf 'export %s=%q\n' "$v" "${!v}"; done >"$out/bench.env"
  for k in $kernels; do
    image=$(kernel_image "$k")
    mkdir -p "$out/$k"
    echo "kernel-matrix: bench $bench on $(basename "$image") (TCG)"
    PATH="$venv/bin:$PATH" timeout "$vm_limit" "$venv/bin/vng" --disable-kvm --force-9p --run "$image" --cpus 2 --memory 3G \
      --rwdir "$out" --overlay-rwdir "$root" \
      --exec "$root/scripts/kernel-matrix-guest.sh $out/bins $out/$k $k bench" \
      >"$out/$k/console.log" 2>&1 || echo "kernel-matrix: the $k VM exited with $?" >>"$out/$k/console.log"
    echo "== $bench on Linux $(sed -n 's/^kernel //p' "$out/$k/guest-info" 2>/dev/null) (qemu TCG, 2 vCPUs) =="
    cat "$out/$k/$bench.log" 2>/dev/null || { cat "$out/$k/console.log"; exit 1; }
  done
  rm -rf "$out"
  exit 0
fi

# ---- test binaries, built once on the host ----
echo "kernel-matrix: building the test binaries"
bins=$(cargo test --no-run --tests --message-format=json 2>/dev/null | executables test)
out=$(mktemp -d /tmp/lwtun-matrix.XXXXXX)
echo "cache=$cache" >"$out/env"
list=$out/bins
: >"$list"
while read -r name exe; do
  [ -n "$name" ] || continue
  if [ -z "$wanted" ] || [[ " $wanted " == *" $name "* ]]; then
    echo "$name $exe" >>"$list"
  fi
done <<<"$bins"
[ -s "$list" ] || { echo "kernel-matrix: no test binary matches '$wanted'" >&2; exit 1; }
echo "kernel-matrix: $(wc -l <"$list") test binaries: $(awk '{print $1}' "$list" | tr '\n' ' ')"

# ---- runs ----
columns=(host)
mkdir -p "$out/host"
echo "kernel-matrix: host $(uname -r)"
"$root/scripts/kernel-matrix-guest.sh" "$list" "$out/host" host
for k in $kernels; do
  image=$(kernel_image "$k")
  col=$k
  columns+=("$col")
  mkdir -p "$out/$col"
  echo "kernel-matrix: booting $(basename "$image") (TCG)"
  start=$SECONDS
  # --exec travels on the kernel command line: a script and two paths, nothing long.
  PATH="$venv/bin:$PATH" timeout "$vm_limit" "$venv/bin/vng" --disable-kvm --force-9p --run "$image" --cpus 2 --memory 3G \
    --rwdir "$out" --overlay-rwdir "$root" \
    --exec "$root/scripts/kernel-matrix-guest.sh $list $out/$col $col" \
    >"$out/$col/console.log" 2>&1 || echo "kernel-matrix: the $col VM exited with $?" >>"$out/$col/console.log"
  echo "kernel-matrix: $col done in $((SECONDS - start)) s"
done

if python3 "$root/scripts/kernel-matrix-table.py" "$out" "${columns[@]}"; then
  rm -rf "$out"
else
  echo "kernel-matrix: every binary's output and each VM's console log are in $out" >&2
  exit 1
fi
