#!/usr/bin/env python3
"""The kernel matrix's coverage table, from the logs scripts/kernel-matrix-guest.sh wrote.

    kernel-matrix-table.py OUT COLUMN...

For every test of every binary (from BIN.list, written by `BIN --list`) and every column:
pass, FAIL, skipped (the reason the test printed: "SKIPPED NAME (kernel lacks ...)"),
ignored, or FAIL (no result) when the binary ran but never reported the test (it crashed, the
VM died or the time limit stopped it), FAIL (not run) when the binary never started there (the
VM did not boot: its console log says why).
Prints the table, writes it to OUT/matrix.md, and ends with
    kernel-matrix: T tests x K kernels: F failed, U never passed on any kernel
exiting 1 when F or U is not 0.
"""
import os
import re
import sys

out, columns = sys.argv[1], sys.argv[2:]
START = re.compile(r'^test (\S+) \.\.\. ?(.*)$')
# libtest prints an ignored test's reason after a comma: "ignored, REASON".
OUTCOME = re.compile(r'(?:^|\s)(ok|FAILED|ignored)(?:, .*)?\s*$')
SKIP = re.compile(r'SKIPPED (\S+?):? \((kernel lacks .*)\)\s*$')

binaries = []
with open(os.path.join(out, 'bins')) as f:
    for line in f:
        if line.strip():
            binaries.append(line.split()[0])


def tests_of(binary):
    for col in columns:
        path = os.path.join(out, col, binary + '.list')
        if os.path.exists(path):
            names = [l.split(': test')[0] for l in open(path) if l.rstrip().endswith(': test')]
            if names:
                return names
    return []


rows = []  # (binary, test, {column: cell})
for binary in binaries:
    tests = tests_of(binary)
    per_col = {}
    for col in columns:
        log = os.path.join(out, col, binary + '.log')
        if not os.path.exists(log):
            per_col[col] = None
            continue
        text = open(log, errors='replace').read()
        results, skips = {}, {}
        # "test NAME ... ok", or, when the test wrote to stderr meanwhile (a SKIPPED line),
        # "test NAME ... " and the outcome at the end of a later line.
        pending = None
        for line in text.splitlines():
            m = SKIP.search(line)
            if m:
                skips.setdefault(m.group(1), m.group(2))
            m = START.match(line)
            if m:
                pending = m.group(1)
                line = m.group(2)
            if pending:
                o = OUTCOME.search(line)
                if o:
                    results[pending] = o.group(1)
                    pending = None
        per_col[col] = (results, skips)
    for test in tests:
        cells = {}
        for col in columns:
            got = per_col[col]
            if got is None:
                cells[col] = 'FAIL (not run: see %s/console.log)' % col
                continue
            results, skips = got
            r = results.get(test)
            if r is None:
                cells[col] = 'FAIL (no result)'
            elif r == 'FAILED':
                cells[col] = 'FAIL'
            elif r == 'ignored':
                cells[col] = 'ignored'
            elif test.split('::')[-1] in skips or test in skips:
                reason = skips.get(test.split('::')[-1], skips.get(test)) or ''
                cells[col] = 'skipped (%s)' % (reason if len(reason) <= 48 else reason[:47] + '…')
            else:
                cells[col] = 'pass'
        rows.append((binary, test, cells))

lines = ['| test | ' + ' | '.join(columns) + ' |', '|---|' + '---|' * len(columns)]
failed = never = counted = 0
for binary, test, cells in rows:
    if all(c == 'ignored' for c in cells.values()):
        lines.append('| %s::%s | %s |' % (binary, test, ' | '.join(cells[c] for c in columns)))
        continue
    counted += 1
    failed += sum(1 for c in cells.values() if c.startswith('FAIL'))
    if not any(c == 'pass' for c in cells.values()):
        never += 1
    lines.append('| %s::%s | %s |' % (binary, test, ' | '.join(cells[c] for c in columns)))
summary = 'kernel-matrix: %d tests x %d kernels: %d failed, %d never passed on any kernel' % (
    counted, len(columns), failed, never)
table = '\n'.join(lines)
with open(os.path.join(out, 'matrix.md'), 'w') as f:
    f.write(table + '\n\n' + summary + '\n')
print(table)
print()
for col in columns:
    info = os.path.join(out, col, 'guest-info')
    kernel = open(info).readline().strip() if os.path.exists(info) else ''
    print('%s: %s' % (col, kernel or 'this machine'))
print(summary)
sys.exit(1 if failed or never else 0)
