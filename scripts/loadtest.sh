#!/usr/bin/env bash
# The end-to-end load test on one machine, through a real broker (README "Load test").
#
#   scripts/loadtest.sh [EVENTS] [SPEED]        # defaults: 1000000 max
#
# Builds orderflow (release), synthesizes a peak-hour trace of EVENTS events (seeded;
# kept in target/loadtest/trace-EVENTS/), starts a Nisshi broker on memory storage,
# loads the merchants, starts one enricher and one aggregator, and runs
# `orderflow loadtest --broker-baseline`: the broker alone on the same messages first,
# then the trace through the pipeline at SPEED (`max`, `realtime` or e.g. `20x`). The
# report (JSON and SVG) goes to target/loadtest/report-EVENTS/. Everything it started
# is stopped on exit. Set ORDERFLOW_BROKERS to use a running cluster instead of Nisshi.
set -euo pipefail
cd "$(dirname "$0")/.."

EVENTS="${1:-1000000}"
SPEED="${2:-max}"
WORK="target/loadtest"
TRACE_DIR="$WORK/trace-$EVENTS"
REPORT_DIR="$WORK/report-$EVENTS"
mkdir -p "$WORK"
export PATH="$HOME/.cargo/bin:$PATH"

log() { printf '==> %s\n' "$*" >&2; }
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
}
trap cleanup EXIT

log "Building orderflow (release)"
cargo build --release --quiet -p orderflow
OF="$PWD/target/release/orderflow"

if [[ ! -s "$TRACE_DIR/trace.jsonl" ]]; then
  log "Synthesizing a $EVENTS-event peak-hour trace into $TRACE_DIR"
  "$OF" trace synth --events "$EVENTS" --out "$TRACE_DIR"
fi

if [[ -z "${ORDERFLOW_BROKERS:-}" ]]; then
  command -v nisshi >/dev/null || { echo "nisshi is not installed: run scripts/test.sh once, or set ORDERFLOW_BROKERS" >&2; exit 1; }
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  log "Starting Nisshi (memory storage) on 127.0.0.1:$port"
  nisshi broker --listener-url "tcp://127.0.0.1:$port" --advertised-listener-url "tcp://127.0.0.1:$port" \
    --storage-engine memory://loadtest/ --group-initial-rebalance-delay 100ms --silent &
  pids+=($!)
  export ORDERFLOW_BROKERS="127.0.0.1:$port"
  for _ in $(seq 1 100); do (echo >"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done
fi
export ORDERFLOW_TOPIC_PREFIX="loadtest-$(date +%s)"
export ORDERFLOW_PARTITIONS="${ORDERFLOW_PARTITIONS:-4}"
export RUST_LOG="${RUST_LOG:-warn}"

"$OF" merchants load "$TRACE_DIR/merchants.csv"
"$OF" enrich --metrics-addr 127.0.0.1:0 &
pids+=($!)
"$OF" aggregate --metrics-addr 127.0.0.1:0 --checkpoint-interval 1s &
pids+=($!)

log "Load test: $EVENTS events at $SPEED (topic prefix $ORDERFLOW_TOPIC_PREFIX)"
"$OF" loadtest "$TRACE_DIR/trace.jsonl" --speed "$SPEED" --broker-baseline --report "$REPORT_DIR"
