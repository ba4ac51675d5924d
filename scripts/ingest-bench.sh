#!/usr/bin/env bash
# Benchmark of HTTP ingest on loopback (benches/README.md#http-ingest-against-replay), against
# `orderflow replay` of the same events on the same broker in the same run.
#
#   scripts/ingest-bench.sh [EVENTS] [SECONDS_PER_RUN]     # defaults: 200000, 20
#
# 1. Starts a Nisshi broker (in memory) on a free port and writes a synthetic trace of
#    EVENTS events (`orderflow trace synth`, no invalid events).
# 2. Baseline: `orderflow replay` of the trace to its own topic prefix: events/s and
#    CPU seconds of the replay process.
# 3. For batch sizes 1, 100 and 1,000: `orderflow ingest` (rate limit off) on its own
#    prefix, and `wrk` posting the trace's events as JSON arrays of that many events of
#    one storefront (with its token) for SECONDS_PER_RUN, cycling through the trace.
#    Events/s is what ingest accepted (its `orderflow_ingest_events_total` metric) over
#    wrk's run; p50/p99 are wrk's per-request latencies; CPU per million events is the
#    ingest process's user+system time (/proc/PID/stat) over the run.
#
# Needs: a release build (`cargo build --release -p orderflow`), `wrk` (Debian: apt-get
# install wrk), python3, and Nisshi as scripts/test.sh installs it. Not part of the test
# command. Stops every process it starts.
set -euo pipefail
cd "$(dirname "$0")/.."

EVENTS=${1:-200000}
SECONDS_PER_RUN=${2:-20}
BIN=${ORDERFLOW_BIN:-${CARGO_TARGET_DIR:-target}/release/orderflow}
NISSHI=${NISSHI_BIN:-$(command -v nisshi || echo "$HOME/.cargo/bin/nisshi")}
WRK_THREADS=${WRK_THREADS:-2}
[[ -x "$BIN" ]] || { echo "build first: cargo build --release -p orderflow ($BIN missing)" >&2; exit 1; }
command -v wrk >/dev/null || { echo "wrk is missing: apt-get install wrk" >&2; exit 1; }

work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
hz=$(getconf CLK_TCK)

port=$(free_port)
"$NISSHI" broker --listener-url "tcp://127.0.0.1:$port" --advertised-listener-url "tcp://127.0.0.1:$port" \
  --storage-engine memory://bench/ --silent >/dev/null 2>&1 &
pids+=($!)
export ORDERFLOW_BROKERS=127.0.0.1:$port RUST_LOG=warn
for _ in $(seq 100); do (echo >/dev/tcp/127.0.0.1/"$port") 2>/dev/null && break; sleep 0.1; done

"$BIN" trace synth --out "$work" --events "$EVENTS" --invalid 0 >/dev/null
lines=$(wc -l <"$work/trace.jsonl")
echo "trace: $lines events; broker: Nisshi (memory) at 127.0.0.1:$port; $(nproc) cores"

# Baseline: replay, its wall time and CPU.
python3 - "$BIN" "$work/trace.jsonl" <<'EOF'
import os, sys, time, subprocess
bin, trace = sys.argv[1], sys.argv[2]
env = dict(os.environ, ORDERFLOW_TOPIC_PREFIX="bench-replay")
start = time.monotonic()
p = subprocess.Popen([bin, "replay", trace, "--no-progress"], env=env, stdout=subprocess.PIPE, text=True)
_, status, usage = os.wait4(p.pid, 0)
wall = time.monotonic() - start
out = p.stdout.read().strip()
n = int(out.split()[1])
cpu = usage.ru_utime + usage.ru_stime
print(f"replay: {n} events in {wall:.2f} s = {n / wall:,.0f} events/s; CPU {cpu:.2f} s = {cpu / n * 1e6:.2f} s per million events")
print(f"REPLAY_RATE {n / wall:.0f}")
EOF

# Request bodies: the trace's events per storefront, in trace order, in arrays of B.
python3 - "$work" <<'EOF'
import hashlib, json, sys, collections
work = sys.argv[1]
by = collections.defaultdict(list)
for line in open(f"{work}/trace.jsonl"):
    e = json.loads(line)
    by[e.get("storefrontId", "")].append(line.strip())
with open(f"{work}/tokens", "w") as t:
    for s in by:
        token = f"bench-token-{s or 'none'}"
        t.write(f"{s or 'none'} {hashlib.sha256(token.encode()).hexdigest()}\n")
for b in (1, 100, 1000):
    with open(f"{work}/bodies-{b}", "w") as f:
        for s, events in by.items():
            token = f"bench-token-{s or 'none'}"
            for i in range(0, len(events), b):
                f.write(token + "\t[" + ",".join(events[i:i + b]) + "]\n")
EOF

cat >"$work/post.lua" <<'EOF'
-- Posts the bodies of a file (`token<TAB>json` a line) round-robin; each thread starts
-- at its own offset.
local threads = 0
function setup(thread)
  thread:set("id", threads)
  threads = threads + 1
end
function init(args)
  reqs = {}
  for line in io.lines(args[1]) do
    local tab = line:find("\t", 1, true)
    reqs[#reqs + 1] = wrk.format("POST", "/v1/events",
      { ["Authorization"] = "Bearer " .. line:sub(1, tab - 1), ["Content-Type"] = "application/json" },
      line:sub(tab + 1))
  end
  i = math.floor(#reqs * id / 4)
end
function request()
  i = i % #reqs + 1
  return reqs[i]
end
EOF

metric() { curl -s "http://$1/metrics" | awk -v m="$2" '$1 == m {print $2; f=1} END {if (!f) print 0}'; }
accepted='orderflow_ingest_events_total{outcome="accepted",reason="none"}'

for b in 1 100 1000; do
  api=127.0.0.1:$(free_port); mport=127.0.0.1:$(free_port)
  ORDERFLOW_TOPIC_PREFIX=bench-ingest-$b "$BIN" ingest --tokens-file "$work/tokens" --listen "$api" --metrics-addr "$mport" \
    --rate-limit 0 >"$work/ingest-$b.log" 2>&1 &
  ipid=$!; pids+=($ipid)
  for _ in $(seq 300); do [[ $(curl -s -o /dev/null -w '%{http_code}' "http://$mport/readyz") == 200 ]] && break; sleep 0.1; done
  case $b in 1) conns=64 ;; 100) conns=32 ;; *) conns=16 ;; esac
  # A short warm-up (connections, the producer's metadata), not measured.
  wrk -t1 -c4 -d2s -s "$work/post.lua" "http://$api" -- "$work/bodies-$b" >/dev/null
  before=$(metric "$mport" "$accepted"); t0=$(ticks "$ipid")
  wrk -t"$WRK_THREADS" -c"$conns" -d"${SECONDS_PER_RUN}s" --latency -s "$work/post.lua" "http://$api" -- "$work/bodies-$b" >"$work/wrk-$b.txt"
  after=$(metric "$mport" "$accepted"); t1=$(ticks "$ipid")
  python3 - "$b" "$conns" "$before" "$after" "$t0" "$t1" "$hz" "$work/wrk-$b.txt" <<'EOF'
import re, sys
b, conns, before, after, t0, t1, hz, path = sys.argv[1:]
text = open(path).read()
secs = float(re.search(r"requests in ([\d.]+)(m?s)", text).group(1)) * (0.001 if "ms," in text.split("requests in")[1][:12] else 1)
reqs = int(re.search(r"(\d+) requests in", text).group(1))
lat = dict(re.findall(r"^\s+(50|99)%\s+(\S+)", text, re.M))
non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
events = float(after) - float(before)
cpu = (int(t1) - int(t0)) / int(hz)
print(f"ingest batch {b:>4} ({conns} connections): {events:,.0f} events in {secs:.1f} s = {events / secs:,.0f} events/s "
      f"({reqs / secs:,.0f} requests/s); p50 {lat.get('50')}, p99 {lat.get('99')}; CPU {cpu:.2f} s = "
      f"{cpu / events * 1e6:.2f} s per million events; non-2xx: {non2xx.group(1) if non2xx else 0}")
print(f"INGEST_RATE {b} {events / secs:.0f}")
EOF
  kill "$ipid"; wait "$ipid" 2>/dev/null || true
done
