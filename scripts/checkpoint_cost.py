#!/usr/bin/env python3
"""The measuring side of scripts/checkpoint-cost.sh (stdlib only).

Subcommands:

  sample ADDR PID [EVERY]   one JSON line of the aggregator's metrics (from
                            http://ADDR/metrics) and CPU seconds of PID; every EVERY
                            seconds until killed, or once (exit 1 if unreadable)
  ready ADDR PARTITIONS     exit 0 once /readyz answers 200 and PARTITIONS
                            partitions were restored
  flowing SAMPLES           exit 0 once a sample in the JSON-lines file SAMPLES shows
                            input bytes read
  summary DIR JSON PARTITIONS SECONDS RATE
                            print the paced runs' summary and write it to JSON
  totals-match REPORT NAME  exit 1, printing the differences, if the load test's
                            report does not match the trace
  metric-sum ADDR NAME      print the sum of every sample of metric NAME on
                            http://ADDR/metrics, as a whole number (0 if unreachable)

The /metrics page and /proc/PID/stat are read the way the load test reads them
(orderflow_runtime::metrics_page and the load test's cpu module): one sample a line,
comments skipped; user plus system clock ticks after the command name's last ")".
"""
import json, sys, time, urllib.request

HORIZON = 65.0  # the aggregator's default dedup horizon (window 1m + lateness 5s)

def samples(page):
    """(name, labels, value) of each sample line; labels as written after the "{",
    closing brace included, "" for none."""
    for line in page.splitlines():
        if not line or line.startswith("#"):
            continue
        series, value = line.rsplit(" ", 1)
        name, _, labels = series.partition("{")
        yield name, labels, float(value)

def page(addr):
    return urllib.request.urlopen(f"http://{addr}/metrics", timeout=2).read().decode()

def scrape(addr):
    m, dedup = {}, {}
    for name, labels, v in samples(page(addr)):
        if name == "orderflow_aggregator_partition_restores_total":
            name += "{" + labels
        if name == "orderflow_aggregator_dedup_ids":
            dedup[labels.rstrip("}")] = v
        m[name] = m.get(name, 0.0) + v
    return m, dedup

def cpu(pid):
    try:
        stat = open(f"/proc/{pid}/stat").read()
    except OSError:
        return None
    fields = stat[stat.rfind(")") + 1:].split()
    return (int(fields[11]) + int(fields[12])) / 100.0

def sample(addr, pid):
    t = time.time()
    try:
        m, dedup = scrape(addr)
    except Exception:
        return None
    return {"t": t, "cpu": cpu(pid), "m": m, "dedup": dedup}

def ready(addr):
    try:
        return urllib.request.urlopen(f"http://{addr}/readyz", timeout=2).status == 200
    except Exception:
        return False

def load(path):
    try:
        return [json.loads(l) for l in open(path) if l.strip()]
    except FileNotFoundError:
        return []

M = lambda s, k: s["m"].get(k, 0.0) if s else 0.0
IN, CP_SUM, CP_COUNT = "orderflow_aggregator_input_bytes_total", "orderflow_aggregator_checkpoint_size_bytes_sum", "orderflow_aggregator_checkpoint_size_bytes_count"
EVENTS = "orderflow_aggregator_events_total"

def stretch(samples, t_from, t_to):
    """The first sample at or after t_from and the last at or before t_to."""
    inside = [s for s in samples if t_from <= s["t"] <= t_to]
    return (inside[0], inside[-1]) if len(inside) >= 2 else None

def rates(*pairs):
    """Rates over one or more (first, last) sample pairs, summed."""
    dt = sum(b["t"] - a["t"] for a, b in pairs)
    d = lambda k: sum(M(b, k) - M(a, k) for a, b in pairs)
    return {
        "seconds": round(dt, 1),
        "eventsPerSecond": round(d(EVENTS) / dt),
        "inputBytesPerSecond": round(d(IN) / dt),
        "checkpointBytesPerSecond": round(d(CP_SUM) / dt),
        "checkpoints": int(d(CP_COUNT)),
        "checkpointToInputPercent": round(100.0 * d(CP_SUM) / d(IN), 2) if d(IN) else None,
    }

def analyse(run_dir, partitions, seconds):
    marks = json.load(open(f"{run_dir}/marks.json"))
    report = json.load(open(f"{run_dir}/report/report.json"))
    first, second = load(f"{run_dir}/samples-1.jsonl"), load(f"{run_dir}/samples-2.jsonl")
    t0, t_mark = marks["inputStarted"], marks["mark"]
    # Steady: the first aggregator once its dedup memory is full (the horizon, plus 5 s),
    # to the mark; and the second from 5 s after it caught up (once it has read
    # something, its rate back within 25% of the first's: the backlog since the last
    # checkpoint done) to the replay's end.
    whole = stretch(first, t0, t_mark)
    steady_from = t0 + HORIZON + 5.0
    pairs = [stretch(first, steady_from, t_mark) if t_mark - steady_from >= 10 else None]
    caught_up = None
    if marks.get("ready") and whole:
        pace = (M(whole[1], EVENTS) - M(whole[0], EVENTS)) / (whole[1]["t"] - whole[0]["t"])
        after = [s for s in second if s["t"] >= marks["ready"] and M(s, EVENTS) > 0]
        caught_up = next((a["t"] for a, b in zip(after, after[1:]) if (M(b, EVENTS) - M(a, EVENTS)) / (b["t"] - a["t"]) <= 1.25 * pace), None)
    if caught_up and t0 + seconds - 1 - (caught_up + 5) >= 10:
        pairs.append(stretch(second, caught_up + 5, t0 + seconds - 1))
    pairs = [p for p in pairs if p]
    out = {"totalsMatched": report["totals"]["matched"], "totals": report["totals"]["totals"],
           "lateEvents": report["totals"]["lateEvents"], "events": report["events"],
           "achievedEventsPerSecond": round(report["throughput"]["achievedEventsPerSecond"]),
           "replaySeconds": report["replaySeconds"], "lastTotalSeconds": report.get("lastTotalSeconds")}
    lags = [(s.get("enricherLag"), s.get("aggregatorLag")) for s in report["seconds"]]
    out["enricherLagMax"] = max((e for e, _ in lags if e is not None), default=None)
    agg = sorted(a for _, a in lags if a is not None)
    out["aggregatorCommittedLagMax"] = agg[-1] if agg else None
    out["aggregatorCommittedLagP50"] = agg[len(agg) // 2] if agg else None
    # Whether the pipeline kept up: the load test's lag is from committed offsets, which
    # the aggregator commits with its checkpoints (every 5 s), so the aggregator's is
    # judged by its rate (eventsPerSecond against the replay's), its CPU and how soon
    # after the last send both groups had committed everything.
    if report.get("pipelineSeconds") is not None:
        out["caughtUpAfterLastSendSeconds"] = round(report["pipelineSeconds"] - report["replaySeconds"], 1)
    out["steady"] = rates(*pairs) if pairs else None
    if pairs:
        out["steady"]["stretches"] = [[round(a["t"] - t0, 1), round(b["t"] - t0, 1)] for a, b in pairs]
    if whole:
        out["untilMark"] = rates(whole)
    last1 = first[-1] if first else None
    last2 = second[-1] if second else None
    in_total = M(last1, IN) + M(last2, IN)
    cp_total = M(last1, CP_SUM) + M(last2, CP_SUM)
    out["wholeRun"] = {
        "inputBytes": int(in_total), "checkpointBytes": int(cp_total),
        "checkpointToInputPercent": round(100.0 * cp_total / in_total, 2) if in_total else None,
        "checkpoints": int(M(last1, CP_COUNT) + M(last2, CP_COUNT)),
        "checkpointFailures": int(M(last1, "orderflow_aggregator_checkpoint_failures_total") + M(last2, "orderflow_aggregator_checkpoint_failures_total")),
    }
    out["largestCheckpointBytes"] = int(max(M(last1, "orderflow_aggregator_checkpoint_size_max_bytes"), M(last2, "orderflow_aggregator_checkpoint_size_max_bytes")))
    if last1 and last1["dedup"]:
        out["dedupIdsPerPartitionAtMark"] = {k: int(v) for k, v in sorted(last1["dedup"].items())}
    c = [s for s in first if s["cpu"] is not None and s["t"] >= t0]
    if c:
        events = M(c[-1], EVENTS) - M(c[0], EVENTS)
        cpu_s = c[-1]["cpu"] - c[0]["cpu"]
        out["aggregatorCpu"] = {"seconds": round(cpu_s, 2), "events": int(events), "cores": round(cpu_s / (c[-1]["t"] - c[0]["t"]), 3),
                                "microsecondsPerEvent": round(1e6 * cpu_s / events, 3) if events else None,
                                "over": "first input to the mark"}
    if marks.get("killed"):
        restored = M(last2, 'orderflow_aggregator_partition_restores_total{from="checkpoint"}')
        scratch = M(last2, 'orderflow_aggregator_partition_restores_total{from="scratch"}')
        total = M(last2, "orderflow_aggregator_restore_duration_seconds_sum")
        out["restore"] = {
            "partitionsFromCheckpoint": int(restored), "partitionsFromScratch": int(scratch),
            "takeOvers": int(M(last2, "orderflow_aggregator_restore_duration_seconds_count")),
            "seconds": round(total, 3),
            "maxSeconds": round(M(last2, "orderflow_aggregator_restore_duration_max_seconds"), 3),
            "secondsPerPartition": round(total / (restored + scratch), 3) if restored + scratch else None,
            "readyAfterSeconds": round(marks["ready"] - marks["restarted"], 1) if marks.get("ready") else None,
            "caughtUpAfterSeconds": round(caught_up - marks["restarted"], 1) if caught_up else None,
        }
    return out

def summary(out_dir, path, partitions, seconds, rate):
    partitions, seconds = int(partitions), int(seconds)
    result = {"partitions": partitions, "seconds": seconds, "targetEventsPerSecondPerPartition": int(rate),
              "checkpointInterval": "5s", "runs": {}}
    for name in ("checkpoints", "no-checkpoints"):
        try:
            result["runs"][name] = analyse(f"{out_dir}/{name}", partitions, seconds)
        except FileNotFoundError:
            pass
    r = result["runs"]["checkpoints"]
    s = r["steady"] or r.get("untilMark")
    if r.get("aggregatorCpu") and "no-checkpoints" in result["runs"]:
        a, b = r["aggregatorCpu"]["microsecondsPerEvent"], result["runs"]["no-checkpoints"].get("aggregatorCpu", {}).get("microsecondsPerEvent")
        result["cpuWithToWithoutCheckpoints"] = round(a / b, 3) if a and b else None
    json.dump(result, open(path, "w"), indent=2)
    lines = [
        f"Paced checkpoint cost: {partitions} partitions, {seconds} s at {rate} events/s per partition, --checkpoint-interval 5s",
        f"  replay                {r['achievedEventsPerSecond']:,} events/s acknowledged over {r['replaySeconds']:.1f} s",
        f"  events per partition  {s['eventsPerSecond'] / partitions:,.0f}/s at the aggregator ("
        + (f"steady: {s['seconds']} s in s {', '.join(f'{a:.0f}-{b:.0f}' for a, b in s['stretches'])} of the run" if r['steady'] else f"until the mark, {s['seconds']} s; too short to be steady")
        + ")",
        f"  input                 {s['inputBytesPerSecond']:,} bytes/s",
        f"  checkpoints           {s['checkpointBytesPerSecond']:,} bytes/s ({s['checkpoints']} checkpoints in the stretch)",
        f"  checkpoint / input    {s['checkpointToInputPercent']}% (target: below 5%)",
        f"  whole run             {r['wholeRun']['checkpointToInputPercent']}%: {r['wholeRun']['checkpointBytes']:,} checkpoint bytes for {r['wholeRun']['inputBytes']:,} input bytes",
        f"  largest checkpoint    {r['largestCheckpointBytes']:,} bytes; {r['wholeRun']['checkpoints']} checkpoints written, {r['wholeRun']['checkpointFailures']} refused",
        f"  keeping up            enricher lag max {r['enricherLagMax']} records; aggregator {r.get('aggregatorCpu', {}).get('cores')} cores until the mark; "
        f"both groups committed everything {r.get('caughtUpAfterLastSendSeconds')} s after the last send",
    ]
    if r.get("restore"):
        x = r["restore"]
        lines.append(f"  restore after SIGKILL {x['secondsPerPartition']} s per partition ({x['seconds']} s for {x['partitionsFromCheckpoint']} from checkpoint, {x['partitionsFromScratch']} from scratch, in {x['takeOvers']} take-overs); target: under 1 s per partition")
        lines.append(f"                        after the restart: ready (every partition restored) {x['readyAfterSeconds']} s, caught up {x['caughtUpAfterSeconds']} s (the group waits for the killed member's session timeout first)")
    lines.append(f"  totals                {'match' if r['totalsMatched'] else 'DO NOT MATCH'}: {r['totals']} totals, {r['lateEvents']} late events")
    if "no-checkpoints" in result["runs"]:
        n = result["runs"]["no-checkpoints"]
        lines.append(f"  aggregator CPU        {r.get('aggregatorCpu', {}).get('microsecondsPerEvent')} us/event with checkpoints, {n.get('aggregatorCpu', {}).get('microsecondsPerEvent')} without: ratio {result.get('cpuWithToWithoutCheckpoints')}; without-checkpoints run totals {'match' if n['totalsMatched'] else 'DO NOT MATCH'}")
    lines.append(f"  (written to {path})")
    print("\n".join(lines))
    if not all(run["totalsMatched"] for run in result["runs"].values()):
        sys.exit(1)

def flowing(path):
    """Whether the aggregator has read input, by its samples so far."""
    return any(s["m"].get(IN, 0) > 0 for s in load(path))

def totals_match(report_path, name):
    totals = json.load(open(report_path))["totals"]
    if not totals["matched"]:
        print(f"paced run '{name}': the totals do not match the trace:", *totals["differences"][:20], sep="\n  ", file=sys.stderr)
    return totals["matched"]

def metric_sum(addr, name):
    try:
        return int(sum(v for n, _, v in samples(page(addr)) if n == name))
    except Exception:
        return 0

def main(mode, *args):
    if mode == "sample":
        addr, pid = args[0], args[1]
        every = float(args[2]) if len(args) > 2 else None
        while True:
            s = sample(addr, pid)
            if s:
                print(json.dumps(s), flush=True)
            if every is None:
                sys.exit(0 if s else 1)
            time.sleep(every)
    elif mode == "ready":
        # /readyz alone is not enough: it answers 200 before the aggregator's loop registers.
        s = sample(args[0], 0)
        restored = sum(v for k, v in s["m"].items() if k.startswith("orderflow_aggregator_partition_restores_total")) if s else 0
        sys.exit(0 if ready(args[0]) and restored >= int(args[1]) else 1)
    elif mode == "flowing":
        sys.exit(0 if flowing(args[0]) else 1)
    elif mode == "summary":
        summary(*args[:5])
    elif mode == "totals-match":
        sys.exit(0 if totals_match(args[0], args[1]) else 1)
    elif mode == "metric-sum":
        print(metric_sum(args[0], args[1]))
    else:
        sys.exit(f"checkpoint_cost.py: unknown subcommand {mode!r} (see the docstring)")

if __name__ == "__main__":
    main(*sys.argv[1:])
