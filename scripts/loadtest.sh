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
# shellcheck source=scripts/lib.sh
source scripts/lib.sh
REPORT_DIR="$WORK/report-$EVENTS"
build_and_synth "$EVENTS"
start_broker loadtest
export ORDERFLOW_TOPIC_PREFIX="loadtest-$(date +%s)"
export ORDERFLOW_PARTITIONS="${ORDERFLOW_PARTITIONS:-4}"
export RUST_LOG="${RUST_LOG:-warn}"

"$OF" merchants load "$TRACE_DIR/merchants.csv"
"$OF" enrich --metrics-addr 127.0.0.1:0 &
pids+=($!)
AGG_METRICS="127.0.0.1:$(free_port)"
"$OF" aggregate --metrics-addr "$AGG_METRICS" --checkpoint-interval 1s &
pids+=($!)

log "Load test: $EVENTS events at $SPEED (topic prefix $ORDERFLOW_TOPIC_PREFIX)"
"$OF" loadtest "$TRACE_DIR/trace.jsonl" --speed "$SPEED" --broker-baseline --report "$REPORT_DIR" \
  --aggregator-metrics "$AGG_METRICS"
