"""The report of bench/soak.sh, also run alone on a saved output directory:

    python3 bench/soak_report.py OUT PUBLISHED GROWTH_MIB DIED(0|1) SECONDS

OUT holds metrics/NNNNN.prom (a /metrics scrape every 10 s, with `# rss_kb` and
`# state_bytes` lines appended) and final.prom. Writes OUT/soak.csv, prints a per-minute
markdown table and a summary, and exits 1 if RSS grew by more than GROWTH_MIB after the
warm-up (the 2nd minute), if a message was lost, or if the service died.
"""
import glob, os, re, sys
out, published, growth_mib, died, total = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4] == "1", int(sys.argv[5])
LINE = re.compile(r'^([a-z_]+)(\{[^}]*\})? (\S+)$')
def parse(path):
    m = {}
    for l in open(path):
        if l.startswith("# rss_kb "):
            v = l.split()[2]
            m["rss_kb"] = int(v) if v.isdigit() else 0
            continue
        if l.startswith("# state_bytes "):
            m["state_bytes"] = int(l.split()[2])
            continue
        mo = LINE.match(l.strip())
        if mo:
            m[(mo.group(1), mo.group(2) or "")] = float(mo.group(3))
    return m
def series(m, name):
    return [(k[1], v) for k, v in m.items() if isinstance(k, tuple) and k[0] == name]
def total_of(m, name, where=""):
    return sum(v for lab, v in series(m, name) if where in lab)
def buckets(m):
    return sorted((float(re.search(r'le="([^"]+)"', lab).group(1).replace("+Inf", "inf")), v)
                  for lab, v in series(m, "flowcast_processing_seconds_bucket"))
def quantile(q, prev, cur):
    """histogram_quantile over the window between two scrapes (linear within a bucket), in ms"""
    pb = dict(buckets(prev)) if prev else {}
    d = [(le, c - pb.get(le, 0)) for le, c in buckets(cur)]
    if not d or d[-1][1] <= 0:
        return float("nan")
    rank, lo, below = q * d[-1][1], 0.0, 0
    for le, c in d:
        if c >= rank:
            if le == float("inf"):
                return lo * 1000
            return (lo + (le - lo) * (rank - below) / max(c - below, 1e-9)) * 1000
        lo, below = le, c
    return float("nan")
rows, prev, scrapes = [], None, {}
for path in sorted(glob.glob(f"{out}/metrics/*.prom")):
    t = int(os.path.basename(path).split(".")[0])
    m = parse(path)
    scrapes[t] = m
    minute = scrapes.get(t - 60)
    rows.append(dict(
        t=t, rss_mib=m.get("rss_kb", 0) / 1024, snapshot_kib=m.get("state_bytes", 0) / 1024,
        messages=int(total_of(m, "flowcast_messages_total")),
        matched=int(total_of(m, "flowcast_messages_total", 'result="matched"')),
        p50_ms=quantile(0.5, prev, m), p99_ms=quantile(0.99, prev, m),
        p99_minute_ms=quantile(0.99, minute, m) if minute or t <= 60 else float("nan"),
        in_flight=int(total_of(m, "flowcast_objects_in_flight")),
        outcomes=int(total_of(m, "flowcast_outcomes_total")),
        alerts=int(total_of(m, "flowcast_alerts_fired_total")),
        sink_ok=int(total_of(m, "flowcast_sink_records_total")),
        sink_failures=int(total_of(m, "flowcast_sink_failures_total")),
        sink_dropped=int(total_of(m, "flowcast_sink_dropped_total")),
        reloads_ok=int(total_of(m, "flowcast_reloads_total", 'result="success"')),
        reloads_failed=int(total_of(m, "flowcast_reloads_total", 'result="failure"')),
        snapshots=int(total_of(m, "flowcast_snapshots_total")),
        snapshot_failures=int(total_of(m, "flowcast_snapshot_failures_total")),
    ))
    prev = m
cols = list(rows[0].keys()) if rows else []
with open(f"{out}/soak.csv", "w") as f:
    f.write(",".join(cols) + "\n")
    for r in rows:
        f.write(",".join(f"{r[c]:.3f}" if isinstance(r[c], float) else str(r[c]) for c in cols) + "\n")
final = parse(f"{out}/final.prom") if os.path.exists(f"{out}/final.prom") else {}
counted = int(total_of(final, "flowcast_messages_total"))
drops = {lab: int(v) for lab, v in series(final, "flowcast_sink_dropped_total")}
ok_reloads = int(total_of(final, "flowcast_reloads_total", 'result="success"'))
failed_reloads = int(total_of(final, "flowcast_reloads_total", 'result="failure"'))

print("\n| t (s) | RSS (MiB) | snapshot (KiB) | messages | in flight | p99 latency (ms): last minute / worst 10 s in it | sink records ok / dropped | reloads ok / failed | snapshots |")
print("|---|---|---|---|---|---|---|---|---|")
for r in rows:
    if r["t"] % 60 == 0 or r is rows[-1]:
        worst = max((x["p99_ms"] for x in rows if r["t"] - 60 < x["t"] <= r["t"] and x["p99_ms"] == x["p99_ms"]), default=float("nan"))
        print(f"| {r['t']} | {r['rss_mib']:.1f} | {r['snapshot_kib']:,.0f} | {r['messages']:,} | {r['in_flight']:,} | {r['p99_minute_ms']:.2f} / {worst:.2f} | "
              f"{r['sink_ok']:,} / {r['sink_dropped']:,} | {r['reloads_ok']} / {r['reloads_failed']} | {r['snapshots']} |")
fail = []
if died:
    fail.append("the service died or did not exit 0")
if rows:
    warm = min(120, total // 3)
    base = next((r for r in rows if r["t"] >= warm), rows[0])
    last = rows[-1]
    first_min = [r["rss_mib"] for r in rows if r["t"] <= 60]
    last_min = [r["rss_mib"] for r in rows if r["t"] > last["t"] - 60]
    slope = (last["rss_mib"] - base["rss_mib"]) / max((last["t"] - base["t"]) / 60, 1e-9)
    print(f"\nRSS: first minute {min(first_min):.1f}-{max(first_min):.1f} MiB, last minute {min(last_min):.1f}-{max(last_min):.1f} MiB, "
          f"max {max(r['rss_mib'] for r in rows):.1f} MiB; at {base['t']} s {base['rss_mib']:.1f} MiB, at {last['t']} s {last['rss_mib']:.1f} MiB "
          f"({slope:+.2f} MiB/min after the warm-up; bound {growth_mib:g} MiB)")
    p99 = [r["p99_ms"] for r in rows[1:] if r["p99_ms"] == r["p99_ms"]]
    if p99:
        print(f"p99 latency per 10 s window: min {min(p99):.2f} ms, median {sorted(p99)[len(p99)//2]:.2f} ms, max {max(p99):.2f} ms")
    if last["rss_mib"] - base["rss_mib"] > growth_mib:
        fail.append(f"RSS grew by {last['rss_mib'] - base['rss_mib']:.1f} MiB after the warm-up (bound {growth_mib:g} MiB)")
print(f"messages: published {published:,}, counted {counted:,}; sink drops {drops}; "
      f"reloads ok/failed {ok_reloads}/{failed_reloads}; "
      f"snapshots {int(total_of(final, 'flowcast_snapshots_total'))}")
if published == 0 or counted != published:
    fail.append(f"messages lost: published {published}, counted {counted}")
print(f"CSV: {out}/soak.csv")
if fail:
    print("SOAK FAILED: " + "; ".join(fail))
    sys.exit(1)
print("soak passed")
