#!/usr/bin/env python3
"""Where a process's CPU goes, from a `perf record` of a load test (docs/testing.md,
"Profiling a drain"; what it showed: docs/measurements/2026-12-01-backlog-drain.md).

    perf record -e cpu-clock -F 499 -o drain.data -- scripts/loadtest.sh 2000000 drain
    python3 benches/perf-by-process.py drain.data PID[,PID...] [TOP_SYMBOLS]

perf follows the script's children, so the enricher, the aggregator (pids in
report.json's `cpu`) and Nisshi (`cpu.broker.pid`) are all in the recording. Samples of
every thread of each process are grouped by what the symbol belongs to (librdkafka,
the allocator, the kernel, decoding, the merchant join, dedup, ...), then the top
symbols are listed.
"""
import collections
import re
import subprocess
import sys

GROUPS = [
    (lambda s, d: "kernel" in d, "kernel (syscalls, network, scheduling)"),
    (lambda s, d: s.startswith(("rd_", "tinycthread", "cnd_", "mtx_", "thrd_")) or "crc32c" in s, "librdkafka (C)"),
    (lambda s, d: "malloc" in s or "free" in s or s.startswith(("_int_", "unlink_chunk", "sysmalloc")) or "mi_" in s[:4], "allocator"),
    (lambda s, d: s.startswith("__mem") or "memcpy" in s or "memmove" in s, "memcpy/memcmp"),
    (lambda s, d: "clock_gettime" in s, "clock reads"),
    (lambda s, d: "pthread" in s or "futex" in s or "__lll" in s, "locks"),
    (lambda s, d: "orderflow_core::wire" in s or "prost" in s or "validate" in s or "from_utf8" in s, "decode + validate"),
    (lambda s, d: "orderflow_core::merchant" in s, "join (merchant table)"),
    (lambda s, d: "orderflow_core::dedup" in s, "dedup"),
    (lambda s, d: "orderflow_core::window" in s or "orderflow_core::partition" in s, "windows, partition state"),
    (lambda s, d: "metrics" in s, "metrics"),
    (lambda s, d: "rdkafka::" in s, "rdkafka (Rust binding: futures, message wrappers)"),
    (lambda s, d: "tokio" in s or "futures" in s, "tokio, futures"),
    (lambda s, d: "orderflow" in s, "orderflow, other"),
]


def group(sym, dso):
    for test, name in GROUPS:
        if test(sym, dso):
            return name
    return "other"


def main():
    data, pids = sys.argv[1], {int(p) for p in sys.argv[2].split(",")}
    top = int(sys.argv[3]) if len(sys.argv) > 3 else 15
    out = subprocess.run(["perf", "script", "-i", data, "-F", "pid,tid,comm,ip,sym,dso"], capture_output=True, text=True, check=True).stdout
    total, groups, syms = collections.Counter(), collections.defaultdict(collections.Counter), collections.defaultdict(collections.Counter)
    for line in out.splitlines():
        m = re.match(r"^\s*(.*?)\s+(\d+)/(\d+)\s+([0-9a-f]+)\s+(.*)\s+\((.*)\)\s*$", line)
        if not m or int(m.group(2)) not in pids:
            continue
        pid, sym, dso = int(m.group(2)), re.sub(r"\+0x[0-9a-f]+$", "", m.group(5).strip()), m.group(6)
        total[pid] += 1
        groups[pid][group(sym, dso)] += 1
        syms[pid][sym] += 1
    for pid in sorted(pids):
        n = total[pid] or 1
        print(f"== pid {pid}: {total[pid]} samples")
        for name, k in groups[pid].most_common():
            print(f"  {100 * k / n:5.1f}%  {name}")
        print("  top symbols:")
        for sym, k in syms[pid].most_common(top):
            print(f"    {100 * k / n:5.1f}%  {sym[:110]}")


if __name__ == "__main__":
    main()
