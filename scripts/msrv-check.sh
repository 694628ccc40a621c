#!/usr/bin/env bash
# The declared MSRV (`rust-version` of lwtun) against what the crate needs. First from
# metadata, which names the culprit; this fails when
#  - a dependency lwtun pulls in (normal and build dependencies, transitively; not dev
#    dependencies, not the lwtun-agent workspace member) declares a newer `rust-version`,
#    for the default features and for --no-default-features;
#  - the manifest uses an edition or a Cargo feature newer than the declared version
#    (edition, `dep:` features, `[lints]`, resolver, lock file format).
# Each failure names the dependency or the manifest feature and the Rust version it needs.
# Then lwtun is checked with the declared toolchain itself (installed with rustup, minimal
# profile, when missing): `cargo +MSRV check --lib --bins --locked`, in target/msrv.
# Needs cargo and python3; reads the registry index cache, no network when the lock file is
# complete.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

work=$(mktemp -d /tmp/lwtun-msrv.XXXXXX)
trap 'rm -rf "$work"' EXIT

# lwtun alone, outside the workspace: the agent's dependencies and the features it turns on in
# lwtun (it depends on the default features) must not count. The manifest without its
# [workspace] table, next to links to the sources it names, and the same lock file.
python3 - "$root/Cargo.toml" "$work/Cargo.toml" <<'EOF'
import re, sys
text = open(sys.argv[1]).read()
# drop the [workspace] table (up to the next table header)
text = re.sub(r'(?ms)^\[workspace\]\n.*?(?=^\[|\Z)', '', text)
open(sys.argv[2], 'w').write(text)
EOF
for f in src build.rs bpf benches tests examples README.md; do
  [ -e "$root/$f" ] && ln -s "$root/$f" "$work/$f"
done
cp "$root/Cargo.lock" "$work/Cargo.lock"

target=$(rustc -vV | sed -n 's/^host: //p')
for features in default no-default; do
  args=()
  [ "$features" = no-default ] && args=(--no-default-features)
  # --offline: resolve from the copied lock file and the local index cache
  cargo metadata --quiet --format-version 1 --offline --manifest-path "$work/Cargo.toml" \
    --filter-platform "$target" "${args[@]}" >"$work/metadata-$features.json" 2>"$work/err" ||
    cargo metadata --quiet --format-version 1 --manifest-path "$work/Cargo.toml" \
      --filter-platform "$target" "${args[@]}" >"$work/metadata-$features.json"
done

python3 - "$work" "$root/Cargo.toml" "$root/Cargo.lock" <<'EOF'
import json, re, sys

work, manifest, lock = sys.argv[1:4]

def ver(s):
    return tuple(int(x) for x in re.findall(r'\d+', s)[:3]) + (0,) * (3 - len(re.findall(r'\d+', s)[:3]))

def show(v):
    return '.'.join(str(x) for x in v[:2]) if v[2] == 0 else '.'.join(map(str, v))

failures = []
declared = None
for features in ('default', 'no-default'):
    meta = json.load(open(f'{work}/metadata-{features}.json'))
    pkgs = {p['id']: p for p in meta['packages']}
    nodes = {n['id']: n for n in meta['resolve']['nodes']}
    root_id = meta['resolve']['root']
    me = pkgs[root_id]
    if not me.get('rust_version'):
        sys.exit('msrv-check: lwtun declares no rust-version in Cargo.toml')
    declared = ver(me['rust_version'])
    # normal and build edges everywhere; dev edges never (the metadata already leaves out the
    # dev dependencies of dependencies, the root's are dropped here)
    seen, stack, need = set(), [root_id], []
    while stack:
        pid = stack.pop()
        for dep in nodes[pid]['deps']:
            kinds = {k['kind'] for k in dep['dep_kinds']}
            if not kinds & {None, 'build'}:
                continue
            if dep['pkg'] not in seen:
                seen.add(dep['pkg'])
                stack.append(dep['pkg'])
    for pid in sorted(seen, key=lambda i: pkgs[i]['name']):
        p = pkgs[pid]
        rv = p.get('rust_version')
        if rv and ver(rv) > declared:
            failures.append(f"{p['name']} {p['version']} needs Rust {rv} "
                            f"({features} features)")
    print(f"msrv-check: {features} features: {len(seen)} dependencies, the newest "
          f"rust-version among them: "
          + max((f"{pkgs[i]['rust_version']} ({pkgs[i]['name']})" for i in seen
                 if pkgs[i].get('rust_version')), key=lambda s: ver(s.split()[0]),
                default='none declared'))

# The manifest itself: edition and Cargo features with the Rust version that brought them.
text = open(manifest).read()
uses = []
edition = re.search(r'(?m)^edition\s*=\s*"(\d+)"', text)
uses.append((f'edition {edition.group(1)}' if edition else 'edition 2015',
             {'2015': '1.0', '2018': '1.31', '2021': '1.56', '2024': '1.85'}
             [edition.group(1) if edition else '2015']))
if re.search(r'"dep:', text):
    uses.append(('`dep:` in [features]', '1.60'))
if re.search(r'"[A-Za-z0-9_-]+\?/', text):
    uses.append(('weak dependency features (`name?/feature`)', '1.60'))
if re.search(r'(?m)^\[lints\]|^\[workspace\.lints\]', text):
    uses.append(('[lints]', '1.74'))
if re.search(r'(?m)^\s*[a-z-]+\.workspace\s*=\s*true|^\s*[a-z-]+\s*=\s*\{\s*workspace\s*=\s*true', text):
    uses.append(('workspace inheritance', '1.64'))
resolver = re.search(r'(?m)^resolver\s*=\s*"(\d)"', text)
if resolver:
    uses.append((f'resolver {resolver.group(1)}', {'1': '1.0', '2': '1.51', '3': '1.84'}[resolver.group(1)]))
lockv = re.search(r'(?m)^version\s*=\s*(\d+)', open(lock).read())
if lockv:
    uses.append((f'Cargo.lock version {lockv.group(1)}',
                 {'1': '1.0', '2': '1.41', '3': '1.53', '4': '1.78'}.get(lockv.group(1), '99')))
for what, since in uses:
    if ver(since) > declared:
        failures.append(f"the manifest uses {what}, which needs Rust {since}")

if failures:
    print(f"msrv-check: lwtun declares rust-version {show(declared)}, but:", file=sys.stderr)
    for f in failures:
        print(f"  {f}", file=sys.stderr)
    print("raise rust-version in Cargo.toml (or hold the dependency back)", file=sys.stderr)
    sys.exit(1)
print(f"msrv-check: rust-version {show(declared)} covers every dependency and the manifest "
      f"(from metadata)")
EOF

msrv=$(sed -n 's/^rust-version *= *"\(.*\)"/\1/p' "$root/Cargo.toml" | head -1)
toolchain=$msrv
# rustup names a toolchain by its full version (1.85 -> 1.85.0)
[[ $toolchain =~ ^[0-9]+\.[0-9]+$ ]] && toolchain=$toolchain.0
if ! rustup run "$toolchain" rustc --version >/dev/null 2>&1; then
  echo "msrv-check: installing Rust $toolchain (minimal profile) with rustup"
  rustup toolchain install "$toolchain" --profile minimal >/dev/null
fi
CARGO_TARGET_DIR="$root/target/msrv" cargo "+$toolchain" check --quiet --lib --bins --locked \
  --manifest-path "$root/Cargo.toml" -p lwtun
echo "msrv-check: lwtun and its lwtun command build (cargo check --lib --bins) with Rust $toolchain"
