#!/usr/bin/env python3
"""Turns the results of bench/reverse.sh into markdown tables (medians per
mode and balancer, and sekisho's req/s over the best peer's).

Usage: reverse_report.py RESULTS_TSV
RESULTS_TSV lines: MODE NAME RUN rps p99_us requests cpu_pct errors | note NAME TEXT
"""
import statistics, sys, subprocess, platform
rows, notes = {}, []
for line in open(sys.argv[1]):
    p = line.rstrip("\n").split("\t")
    if p[0] == "note":
        notes.append(f"{p[1]}: {p[2]}")
        continue
    mode, t = p[0], p[1]
    rows.setdefault((mode, t), []).append(dict(rps=float(p[3] or 0), p99=int(p[4] or 0), cpu=float(p[6] or 0), errs=p[7]))
modes = []
for (m, _) in rows:
    if m not in modes:
        modes.append(m)
print(f"machine: {subprocess.run(['nproc'], capture_output=True, text=True).stdout.strip()} CPUs, kernel {platform.release()}")
print()
for m in modes:
    print(f"### {m}")
    print()
    print("| balancer | req/s (median) | p99 µs | balancer CPU % | CPU µs per request | req/s vs sekisho |")
    print("| --- | --- | --- | --- | --- | --- |")
    med = {}
    for (mm, t), rs in rows.items():
        if mm != m:
            continue
        rps = statistics.median(r["rps"] for r in rs)
        p99 = statistics.median(r["p99"] for r in rs)
        cpu = statistics.median(r["cpu"] for r in rs)
        med[t] = (rps, p99, cpu)
    base = med.get("sekisho", (0, 0, 0))[0]
    for t, (rps, p99, cpu) in med.items():
        per = (cpu / 100) / rps * 1e6 if rps else 0
        print(f"| {t} | {rps:.0f} | {p99} | {cpu:.0f} | {per:.1f} | {rps / base if base else 0:.2f} |")
    others = [v[0] for k, v in med.items() if k != "sekisho"]
    if base and others:
        print()
        print(f"sekisho / best peer: {base / max(others):.2f}x req/s")
    print()
for n in notes:
    print(f"- {n}")
