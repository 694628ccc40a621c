#!/usr/bin/env bash
# Builds the example user program examples/own/own_count.bpf.c into own_count.bpf.o next to it,
# the way a user builds their own object: clang -target bpf, with BTF (-g) for libbpf's maps, the
# DWARF stripped afterwards so the object does not depend on the folder it was built in.
#
#   examples/own/build.sh           write examples/own/own_count.bpf.o
#   examples/own/build.sh --check   fail when the committed object is not what the source compiles to
#                                   (./scripts/bpf-objects.sh --check runs this)
set -euo pipefail
cd "$(dirname "$0")/../.."
multiarch=$(gcc -print-multiarch 2>/dev/null || echo "$(uname -m)-linux-gnu")
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
# <bpf/bpf_helpers.h> and friends: libbpf's own headers, from the libbpf-sys crate cargo fetched
# for lwtun (or a system libbpf-dev when there is one).
libbpf=$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/libbpf-sys-*/libbpf/src 2>/dev/null | sort -V | tail -1)
mkdir -p "$out/include/bpf"
if [ -n "$libbpf" ]; then
  cp "$libbpf"/bpf_helpers.h "$libbpf"/bpf_helper_defs.h "$libbpf"/bpf_endian.h "$out/include/bpf/"
elif [ ! -e /usr/include/bpf/bpf_helpers.h ]; then
  echo "examples/own: no libbpf headers (run cargo fetch, or install libbpf-dev)" >&2
  exit 1
fi
clang -Wall -Werror -O2 -g -target bpf -I "/usr/include/$multiarch" -I "$out/include" \
  -fdebug-prefix-map="$PWD"=. -c examples/own/own_count.bpf.c -o "$out/own_count.bpf.o"
llvm-strip -g "$out/own_count.bpf.o"
if [ "${1:-}" = --check ]; then
  cmp -s "$out/own_count.bpf.o" examples/own/own_count.bpf.o || {
    echo "examples/own/own_count.bpf.o is not what examples/own/own_count.bpf.c compiles to with" \
      "$(clang --version | head -1): run examples/own/build.sh and commit it" >&2
    exit 1
  }
  echo "examples/own: own_count.bpf.o matches its source"
else
  cp "$out/own_count.bpf.o" examples/own/own_count.bpf.o
  echo "wrote examples/own/own_count.bpf.o ($(clang --version | head -1))"
fi
