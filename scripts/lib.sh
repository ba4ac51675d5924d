# Shared by scripts/loadtest.sh and scripts/checkpoint-cost.sh (sourced, not run).
# Sets OF (the release binary) and TRACE_DIR, starts Nisshi unless ORDERFLOW_BROKERS is
# set, and stops everything started (pids in `pids`) when the script exits.

export PATH="$HOME/.cargo/bin:$PATH"
WORK="target/loadtest"

log() { printf '==> %s\n' "$*" >&2; }

pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# build_release: builds the release binary; OF is its path.
build_release() {
  log "Building orderflow (release)"
  cargo build --release --quiet -p orderflow
  OF="$PWD/target/release/orderflow"
}

# synth_trace DIR [SYNTH FLAGS...]: writes a trace with `orderflow trace synth` into DIR
# (once: an existing trace there is kept) and sets TRACE_DIR. Needs OF (build_release).
synth_trace() {
  TRACE_DIR="$1"
  shift
  if [[ ! -s "$TRACE_DIR/trace.jsonl" ]]; then
    log "Synthesizing a trace ($*) into $TRACE_DIR"
    "$OF" trace synth "$@" --out "$TRACE_DIR"
  fi
}

# build_and_synth EVENTS: builds the release binary and writes the EVENTS-event
# peak-hour trace (once; kept under target/loadtest/).
build_and_synth() {
  build_release
  synth_trace "$WORK/trace-$1" --events "$1"
}

# start_broker NAME: a Nisshi broker on memory storage, unless ORDERFLOW_BROKERS is set;
# BROKER_PID is its process id (empty for a cluster given in ORDERFLOW_BROKERS).
BROKER_PID=""
start_broker() {
  [[ -n "${ORDERFLOW_BROKERS:-}" ]] && return 0
  command -v nisshi >/dev/null || { echo "nisshi is not installed: run scripts/test.sh once, or set ORDERFLOW_BROKERS" >&2; exit 1; }
  local port
  port=$(free_port)
  log "Starting Nisshi (memory storage) on 127.0.0.1:$port"
  nisshi broker --listener-url "tcp://127.0.0.1:$port" --advertised-listener-url "tcp://127.0.0.1:$port" \
    --storage-engine "memory://$1/" --group-initial-rebalance-delay 100ms --silent &
  pids+=($!)
  BROKER_PID=$!
  export ORDERFLOW_BROKERS="127.0.0.1:$port"
  for _ in $(seq 1 100); do (echo >"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done
}
