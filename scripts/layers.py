#!/usr/bin/env python3
"""The crate's layers, checked: every `crate::X` a module of src/ names must sit on a lower layer.

A module imports only what lies below it; the program families (the top layer) never import
each other: what two of them need moves down into the family kit (`family`) or the layer that
owns the concept. A new module must be given a layer here. Prints one line and exits 1 on the
first run that finds an import going sideways or up.

    ./scripts/layers.py          # the check (run by scripts/test.sh)
    ./scripts/layers.py --list   # every module's imports, by layer
"""

import os
import re
import sys

# Bottom to top. A module may name modules of lower layers only.
LAYERS = [
    ("base", ["error", "skel"]),
    ("raw BPF file descriptors", ["bpf_fd"]),
    ("byte layouts, namespaces, map-in-map tables", ["abi", "netns", "table"]),
    ("family kit, rtnetlink", ["family", "netlink"]),
    ("devices, programs", ["device", "program"]),
    ("probes, peers, chains, tc attachment, BPF object holders",
     ["probe", "peer", "chain", "tc", "holders"]),
    ("events: rtnetlink and peer journals", ["monitor"]),
    ("LWT encap spec, capture", ["lwt_spec", "capture"]),
    ("nexthop objects", ["nexthop"]),
    ("LWT routes", ["route"]),
    ("routes kept in place", ["keeper"]),
    ("program families", ["tunnel", "decap", "lwt_redirect", "tunnel_redirect", "seg6", "service", "xdp"]),
    ("async adapters (tokio feature)", ["aio"]),
]

SRC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src")


def module_of(path):
    """The top-level module a file of src/ belongs to (src/netlink/route/codec.rs -> netlink)."""
    rel = os.path.relpath(path, SRC)
    return rel.split(os.sep)[0].removesuffix(".rs")


def imports(text, known):
    """The top-level modules `text` names through `crate::`, comments left out."""
    text = re.sub(r"//[^\n]*", "", text)
    found = set(re.findall(r"crate::([a-z_0-9]+)", text))
    for group in re.findall(r"use crate::\{([^;]*)\}", text):
        found.update(re.findall(r"(?:^|[,{\s])([a-z_0-9]+)(?=::|\s*[,}]|\s*$)", group))
    return found & known


def main():
    rank = {m: i for i, (_, mods) in enumerate(LAYERS) for m in mods}
    top = len(LAYERS) - 1
    edges = {}
    unplaced = set()
    for root, _, files in os.walk(SRC):
        if os.path.relpath(root, SRC).split(os.sep)[0] == "bin":
            continue  # the lwtun command stands above the library
        for name in files:
            if not name.endswith(".rs"):
                continue
            path = os.path.join(root, name)
            m = module_of(path)
            if m == "lib":
                continue
            if m not in rank:
                unplaced.add(m)
                continue
            with open(path, encoding="utf-8") as f:
                targets = imports(f.read(), set(rank) - {m})
            edges.setdefault(m, {}).update({t: path for t in targets})
    if unplaced:
        print(f"layers: module(s) {', '.join(sorted(unplaced))} have no layer: add them to "
              "LAYERS in scripts/layers.py")
        return 1
    if "--list" in sys.argv:
        for i, (what, mods) in reversed(list(enumerate(LAYERS))):
            for m in mods:
                print(f"{i} {what}: {m} -> {' '.join(sorted(edges.get(m, {}))) or '-'}")
    bad = []
    for m, targets in sorted(edges.items()):
        for t, path in sorted(targets.items()):
            if rank[t] > rank[m]:
                bad.append(f"{os.path.relpath(path, SRC)} ({m}) imports {t}, a higher layer")
            elif rank[t] == rank[m]:
                why = "another program family" if rank[m] == top else "a module of its own layer"
                bad.append(f"{os.path.relpath(path, SRC)} ({m}) imports {t}, {why}")
    count = sum(len(t) for t in edges.values())
    if bad:
        for b in bad:
            print(f"layers: {b}")
        print(f"layers: {len(rank)} modules, {count} imports between them, {len(bad)} against the layers")
        return 1
    print(f"layers: {len(rank)} modules on {len(LAYERS)} layers, {count} imports between them, "
          "all downward; no family imports another")
    return 0


if __name__ == "__main__":
    sys.exit(main())
