#!/usr/bin/env bash
# The end-to-end load test on one machine, through a real broker (docs/testing.md#load-test).
#
#   scripts/loadtest.sh [EVENTS] [SPEED]        # defaults: 1000000 max
#   scripts/loadtest.sh [EVENTS] drain          # the backlog drain
#
# Builds orderflow (release), synthesizes a peak-hour trace of EVENTS events (seeded;
# kept in target/loadtest/trace-EVENTS/), starts a Nisshi broker on memory storage and
# loads the merchants. Then either starts one enricher and one aggregator and runs
# `orderflow loadtest --broker-baseline`: the broker alone on the same messages first,
# then the trace through the pipeline at SPEED (`max`, `realtime` or e.g. `20x`); or,
# with `drain`, runs `orderflow loadtest --mode drain`: the whole trace is published,
# the broker relays it alone (consume, produce, consume again), then the loadtest starts
# the enricher and the aggregator on the backlog and times them to the last total.
# ORDERFLOW_LOADTEST_SERVICE_BINARY=PATH drains with another build's services (A/B).
# Either way the report gives the services' and the broker's CPU per event. The report
# (JSON and SVG) goes to target/loadtest/report-EVENTS/ (report-EVENTS-drain/ for a
# drain; ORDERFLOW_LOADTEST_REPORT overrides). Everything it started is stopped on
# exit. Set ORDERFLOW_BROKERS to use a running cluster instead of Nisshi (no broker CPU
# then).
set -euo pipefail
cd "$(dirname "$0")/.."

EVENTS="${1:-1000000}"
SPEED="${2:-max}"
# shellcheck source=scripts/lib.sh
source scripts/lib.sh
REPORT_DIR="$WORK/report-$EVENTS"
[[ "$SPEED" == drain ]] && REPORT_DIR="$WORK/report-$EVENTS-drain"
REPORT_DIR="${ORDERFLOW_LOADTEST_REPORT:-$REPORT_DIR}"
build_and_synth "$EVENTS"
start_broker loadtest
export ORDERFLOW_TOPIC_PREFIX="loadtest-$(date +%s)"
export ORDERFLOW_PARTITIONS="${ORDERFLOW_PARTITIONS:-4}"
export RUST_LOG="${RUST_LOG:-warn}"

"$OF" merchants load "$TRACE_DIR/merchants.csv"
broker_pid=()
[[ -n "$BROKER_PID" ]] && broker_pid=(--broker-pid "$BROKER_PID")

if [[ "$SPEED" == drain ]]; then
  # The services are the loadtest's children and inherit this environment.
  export ORDERFLOW_CHECKPOINT_INTERVAL="${ORDERFLOW_CHECKPOINT_INTERVAL:-1s}"
  export ORDERFLOW_IDLE_CLOSE="${ORDERFLOW_IDLE_CLOSE:-2s}"
  log "Backlog drain: $EVENTS events (topic prefix $ORDERFLOW_TOPIC_PREFIX)"
  "$OF" loadtest "$TRACE_DIR/trace.jsonl" --mode drain --report "$REPORT_DIR" "${broker_pid[@]}"
  exit
fi

"$OF" enrich --metrics-addr 127.0.0.1:0 &
pids+=($!)
enricher_pid=$!
AGG_METRICS="127.0.0.1:$(free_port)"
"$OF" aggregate --metrics-addr "$AGG_METRICS" --checkpoint-interval 1s &
pids+=($!)
aggregator_pid=$!

log "Load test: $EVENTS events at $SPEED (topic prefix $ORDERFLOW_TOPIC_PREFIX)"
"$OF" loadtest "$TRACE_DIR/trace.jsonl" --speed "$SPEED" --broker-baseline --report "$REPORT_DIR" \
  --aggregator-metrics "$AGG_METRICS" \
  --enricher-pid "$enricher_pid" --aggregator-pid "$aggregator_pid" "${broker_pid[@]}"
