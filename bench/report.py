#!/usr/bin/env python3
"""Turns the raw results of bench/run.sh into a markdown report.

Usage: report.py RESULTS_TSV META_FILE

RESULTS_TSV lines (tab-separated, written by run.sh):
  fwd      NAME RUN rps p50_us p99_us requests err_connect err_read err_write err_status err_timeout cpu_pct foreign_pct
  connect  NAME RUN bytes_per_s size_download http_code http_connect curl_rc cpu_pct foreign_pct
cpu_pct is the proxy process's CPU use, foreign_pct the CPU use of every other process
on the machine except nginx and the load generator, both in % of one CPU.
  note     NAME TEXT
META_FILE: "key<TAB>value" lines (versions, commands, parameters), printed in order.

Medians are taken per metric over the runs of one target (so the p99 shown
need not come from the same run as the req/s shown).
"""

import statistics
import sys

FWD_ORDER = ["direct", "sekisho-log", "sekisho-nolog", "sekisho-digest", "squid", "tinyproxy"]
CONNECT_ORDER = [n for n in FWD_ORDER if n != "sekisho-digest"]
LABELS = {
    "direct": "direct to nginx (no proxy)",
    "sekisho-log": "sekisho, access log on",
    "sekisho-nolog": "sekisho, access log off",
    "sekisho-digest": "sekisho, Digest auth, access log on",
    "squid": "Squid",
    "tinyproxy": "tinyproxy",
}
ERR_FIELDS = ["connect", "read", "write", "status", "timeout"]


def med(values):
    return statistics.median(values) if values else None


def fmt(v, spec):
    return "n/a" if v is None else format(v, spec)


def ratio(a, b, spec=".2f"):
    if a is None or b is None or b == 0:
        return "n/a"
    return format(a / b, spec)


def main():
    results_path, meta_path = sys.argv[1], sys.argv[2]
    fwd, conn, notes = {}, {}, {}
    with open(results_path) as f:
        for line in f:
            parts = line.rstrip("\n").split("\t")
            if not parts or not parts[0]:
                continue
            kind, name = parts[0], parts[1]
            if kind == "fwd":
                r = dict(run=int(parts[2]), rps=float(parts[3]), p50=int(parts[4]),
                         p99=int(parts[5]), requests=int(parts[6]),
                         errors=dict(zip(ERR_FIELDS, map(int, parts[7:12]))),
                         cpu=float(parts[12]) if parts[12] != "" else None,
                         foreign=float(parts[13]))
                fwd.setdefault(name, []).append(r)
            elif kind == "connect":
                r = dict(run=int(parts[2]), bps=float(parts[3]), size=int(parts[4]),
                         code=parts[5], connect_code=parts[6], rc=int(parts[7]),
                         cpu=float(parts[8]) if parts[8] != "" else None,
                         foreign=float(parts[9]))
                conn.setdefault(name, []).append(r)
            elif kind == "note":
                notes.setdefault(name, []).append(parts[2])

    meta = []
    with open(meta_path) as f:
        for line in f:
            k, _, v = line.rstrip("\n").partition("\t")
            meta.append((k, v))
    metad = dict(meta)
    expected_size = int(metad.get("big_file_bytes", "0"))

    out = []
    p = out.append
    fwd_med = {}
    if fwd:
        forward_section(p, fwd, notes, metad, fwd_med)
    conn_med = {}
    if conn:
        connect_section(p, conn, notes, metad, conn_med, expected_size)
    targets_section(p, fwd_med, conn_med, bool(fwd), bool(conn))
    tail_section(p, notes, meta)
    print("\n".join(out))


def forward_section(p, fwd, notes, metad, fwd_med):
    """Forward proxy, keep-alive: absolute numbers, then ratios of medians."""
    p("### Forward proxy, HTTP/1.1 keep-alive, `GET http://127.0.0.1:ORIGIN/small` (%s-byte body)"
      % metad.get("small_file_bytes", "?"))
    p("")
    p("| target | req/s (median) | p50 latency | p99 latency | proxy CPU (median) | req/s per run | errors (all runs) | other CPU (max) |")
    p("|---|---:|---:|---:|---:|---|---|---:|")
    for name in FWD_ORDER:
        runs = fwd.get(name)
        if not runs:
            if name in notes:
                p("| %s | FAILED | | | | | %s | |" % (LABELS[name], "; ".join(notes[name])))
            continue
        good = [r for r in runs]
        m_rps = med([r["rps"] for r in good])
        m_p50 = med([r["p50"] for r in good])
        m_p99 = med([r["p99"] for r in good])
        cpus = [r["cpu"] for r in good if r["cpu"] is not None]
        m_cpu = med(cpus)
        fwd_med[name] = m_rps
        # requests per second of proxy CPU, per run: capacity when the proxy is
        # not the bottleneck (the Digest run's load generator works harder)
        per_cpu = [r["rps"] / (r["cpu"] / 100) for r in good if r["cpu"]]
        fwd_med[name + "/cpu"] = med(per_cpu)
        errs = {k: sum(r["errors"][k] for r in good) for k in ERR_FIELDS}
        err_txt = ", ".join("%s %d" % ("non-2xx/3xx" if k == "status" else k, v)
                            for k, v in errs.items() if v) or "none"
        p("| %s | %s | %s ms | %s ms | %s | %s | %s | %.0f%% |" % (
            LABELS[name], fmt(m_rps, ",.0f"), fmt(m_p50 / 1000, ".3f"), fmt(m_p99 / 1000, ".3f"),
            "-" if m_cpu is None else "%.0f%%" % m_cpu,
            " / ".join(format(r["rps"], ".0f") for r in good), err_txt,
            max(r["foreign"] for r in good)))
    p("")
    p("Ratios of medians (req/s):")
    p("")
    p("| sekisho | ÷ Squid | ÷ tinyproxy |")
    p("|---|---:|---:|")
    for name in ["sekisho-log", "sekisho-nolog"]:
        p("| %s | %s | %s |" % (LABELS[name], ratio(fwd_med.get(name), fwd_med.get("squid")),
                                ratio(fwd_med.get(name), fwd_med.get("tinyproxy"))))
    p("")



def connect_section(p, conn, notes, metad, conn_med, expected_size):
    """CONNECT download: MB/s and the ratio to the direct transfer."""
    p("### CONNECT tunnel, download of a %s-byte file (`curl -p -x`), MB = 10^6 bytes"
      % metad.get("big_file_bytes", "?"))
    p("")
    p("| path | MB/s (median) | ÷ direct | proxy CPU (median) | MB/s per run | problems | other CPU (max) |")
    p("|---|---:|---:|---:|---|---|---:|")
    for name in CONNECT_ORDER:
        runs = conn.get(name)
        if not runs:
            continue
        m = med([r["bps"] for r in runs])
        conn_med[name] = m
    direct = conn_med.get("direct")
    for name in CONNECT_ORDER:
        runs = conn.get(name)
        if not runs:
            if name in notes:
                p("| %s | FAILED | | | | %s | |" % (LABELS[name], "; ".join(notes[name])))
            continue
        problems = []
        for r in runs:
            if r["rc"] != 0:
                problems.append("run %d: curl exit %d" % (r["run"], r["rc"]))
            if r["code"] != "200":
                problems.append("run %d: HTTP %s" % (r["run"], r["code"]))
            if name != "direct" and r["connect_code"] != "200":
                problems.append("run %d: CONNECT %s" % (r["run"], r["connect_code"]))
            if expected_size and r["size"] != expected_size:
                problems.append("run %d: got %d bytes" % (r["run"], r["size"]))
        cpus = [r["cpu"] for r in runs if r["cpu"] is not None]
        m_cpu = med(cpus)
        p("| %s | %s | %s | %s | %s | %s | %.0f%% |" % (
            LABELS[name], fmt(conn_med[name] / 1e6, ",.0f"),
            ratio(conn_med[name], direct),
            "-" if m_cpu is None else "%.0f%%" % m_cpu,
            " / ".join(format(r["bps"] / 1e6, ".0f") for r in runs),
            "; ".join(problems) or "none",
            max(r["foreign"] for r in runs)))
    p("")

    p("proxy CPU: CPU time of the proxy process during a run, in % of one CPU (it is pinned to one).")
    p("other CPU: CPU time of every process other than the proxy, nginx and wrk/curl during a run,")
    p("in % of one CPU (e.g. a compile running at the same time); runs above FOREIGN_MAX are repeated.")
    p("")



def targets_section(p, fwd_med, conn_med, have_fwd, have_conn):
    direct = conn_med.get("direct")
    p("### Targets")
    p("")

    def verdict(ok):
        return "n/a" if ok is None else ("MET" if ok else "NOT MET")

    for name in ["sekisho-log", "sekisho-nolog"] if have_fwd else []:
        a, b = fwd_med.get(name), fwd_med.get("squid")
        ok = None if a is None or not b else a / b >= 4.0
        p("- %s: forward req/s ≥ 4 × Squid: %s (%s×)" % (LABELS[name], verdict(ok), ratio(a, b)))
    a, b = fwd_med.get("sekisho-digest/cpu"), fwd_med.get("sekisho-log/cpu")
    if have_fwd and a is not None and b:
        cost = 1 - a / b
        raw = 1 - fwd_med["sekisho-digest"] / fwd_med["sekisho-log"]
        p("- Digest authentication costs < 10%% of forward throughput (req/s per second of proxy CPU, "
          "vs. log on): %s (%.1f%%; %.0f vs %.0f req per CPU-second; raw req/s %.1f%% lower, see notes)" % (
              verdict(cost < 0.10), 100 * cost, a, b, 100 * raw))
    for name in ["sekisho-log", "sekisho-nolog"] if have_conn else []:
        a = conn_med.get(name)
        ok = None if a is None or not direct else a / direct >= 0.85
        p("- %s: CONNECT ≥ 85%% of direct: %s (%s)" % (
            LABELS[name], verdict(ok),
            "n/a" if a is None or not direct else "%.1f%%" % (100 * a / direct)))
    p("")



def tail_section(p, notes, meta):
    other_notes = [(n, t) for n, ts in notes.items() for t in ts]
    if other_notes:
        p("### Notes from the run")
        p("")
        for n, t in other_notes:
            p("- %s: %s" % (n, t))
        p("")

    p("### Setup")
    p("")
    for k, v in meta:
        if k.startswith("cmd_"):
            continue
        p("- %s: %s" % (k, v))
    p("")
    p("Commands (PORT/ORIGIN/TMP are chosen per run):")
    p("")
    p("```")
    for k, v in meta:
        if k.startswith("cmd_"):
            p(v)
    p("```")


if __name__ == "__main__":
    main()
