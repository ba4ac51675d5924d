#!/usr/bin/env bash
# orderflow's test command (docs/testing.md#tests; CI runs exactly this through .ci/run).
#
# Installs what the tests need when it is missing, then runs every test in the
# workspace: unit tests of the pure core, and end-to-end tests that start a real
# Kafka-protocol broker (Nisshi) in its own process for each test.
#   - Nisshi 0.8.1 is built with the nightly toolchain (it needs a newer rustc than
#     stable): about 20 minutes on 2 cores, once per machine.
#   - Set ORDERFLOW_TEST_BROKERS=host:port to run against another cluster instead
#     (the fault test's broker-restart scenario and the TLS/SASL tests always start
#     their own Nisshi).
#   - A short fuzzing run follows clippy (scripts/fuzz.sh: cargo-fuzz is installed
#     once per machine, the targets built with the nightly toolchain, or with
#     stable and RUSTC_BOOTSTRAP=1 where there is none).
#   - The fault test runs last, on its own, printing one line per scenario.
#   - The Prometheus config and alerting rules (deploy/prometheus/) are checked and
#     unit-tested with promtool (scripts/check-alerts.sh) right after formatting, and
#     the Kubernetes manifests (deploy/k8s/) checked by scripts/check-k8s.sh, the
#     Grafana dashboards (deploy/grafana/) by scripts/check-dashboards.py, and the
#     documentation (docs/) by scripts/check-docs.py.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '==> %s\n' "$*" >&2; }

# Each phase's time, printed as it ends and again at the end (CI has 90 minutes).
timings=()
phase_name=""
phase_started=$SECONDS
phase() {
  if [[ -n "$phase_name" ]]; then
    local took=$((SECONDS - phase_started))
    timings+=("$(printf '%5d s  %s' "$took" "$phase_name")")
    log "$phase_name: ${took} s"
  fi
  phase_name="$1"
  phase_started=$SECONDS
  [[ -n "$phase_name" ]] && log "$phase_name"
  return 0
}
# A test that needs a tool this script installs fails when the tool is missing, instead
# of skipping with a line the test runner hides.
export ORDERFLOW_REQUIRE_ALL_TOOLS=1

# Formatting first: it needs nothing installed and fails in a second.
phase "cargo fmt --check"
cargo fmt --all -- --check

# The Prometheus config and alerting rules, with their unit tests: under a minute. promtool
# comes with Debian's prometheus package (without its recommends), and so does the
# prometheus server that the dashboards' check and crates/orderflow/tests/prometheus_e2e.rs
# start on loopback ports of their own; where systemd runs, the package also starts its
# server as a system service, which the tests do not need.
# amtool (Alertmanager's config check) comes with prometheus-alertmanager.
if ! command -v promtool >/dev/null || ! command -v prometheus >/dev/null || ! command -v amtool >/dev/null; then
  phase "Installing Debian packages: prometheus (promtool and the server), prometheus-alertmanager (amtool)"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus prometheus-alertmanager >/dev/null
  if [[ -d /run/systemd/system ]]; then systemctl disable --now prometheus prometheus-alertmanager >/dev/null 2>&1 || true; fi
fi
phase "alerting rules and their tests (promtool, amtool)"
scripts/check-alerts.sh

# The Kubernetes manifests against Kubernetes' schemas (kubernetes-validate, from PyPI,
# in a virtualenv under target/), and against the code's variables and probe paths.
if ! python3 -m venv --help >/dev/null 2>&1; then
  log "Installing Debian packages: python3 python3-venv (for the manifests' schema check)"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3 python3-venv >/dev/null
fi
phase "Kubernetes manifests"
scripts/check-k8s.sh

# The build compiles librdkafka and OpenSSL from source (rdkafka's ssl-vendored: no
# system OpenSSL needed). OpenSSL's Configure needs perl with its core modules, which
# perl-base alone (on minimal images) lacks.
need_apt=()
command -v cc >/dev/null || need_apt+=(build-essential)
command -v make >/dev/null || need_apt+=(make)
perl -MIPC::Cmd -MFile::Compare -MFile::Copy -MFindBin -e 1 2>/dev/null || need_apt+=(perl)
command -v kill >/dev/null || need_apt+=(procps)
if ((${#need_apt[@]})); then
  log "Installing Debian packages: ${need_apt[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

# The Grafana dashboards (deploy/grafana/): the provisioned datasource on every panel,
# only metrics the code declares (and in the alerting rules), every expression parsed by
# a throwaway prometheus.
phase "Grafana dashboards"
scripts/check-dashboards.py


if [[ -z "${ORDERFLOW_TEST_BROKERS:-}" ]] && ! command -v nisshi >/dev/null && [[ ! -x "$HOME/.cargo/bin/nisshi" ]]; then
  phase "Installing the Nisshi broker (cargo +nightly install nisshi --version 0.8.1 --locked)"
  if ! rustup toolchain list | grep -q '^nightly'; then
    rustup toolchain install nightly --profile minimal
  fi
  cargo +nightly install nisshi --version 0.8.1 --locked
fi
export PATH="$HOME/.cargo/bin:$PATH"

phase "cargo clippy"
cargo clippy --workspace --all-targets --quiet -- -D warnings
# The fault test is not one of the workspace's default test targets (`test = false`).
cargo clippy -p orderflow --test faults --quiet -- -D warnings
phase "fuzzing: every decoder of outside bytes, 10 s each, seed ${FUZZ_SEED:-1} (scripts/fuzz.sh)"
# A fixed seed: this short run is a regression check that retraces the same inputs,
# not a search (longer runs without a seed search: docs/testing.md#fuzzing).
FUZZ_SEED="${FUZZ_SEED:-1}" scripts/fuzz.sh 10
phase "fuzz seeds are what their generator makes (FUZZ_WRITE_SEEDS=1 rewrites them)"
cargo test --manifest-path fuzz/Cargo.toml --lib --quiet
phase "build the tests"
cargo test --workspace --no-run --quiet "$@"
# The documentation (docs/): every relative link and anchor resolves, each alert's
# runbook_url is its runbook heading, every flag of --help and every metric is
# documented. It reads the help of the binary the tests just built.
phase "documentation (scripts/check-docs.py)"
scripts/check-docs.py "${CARGO_TARGET_DIR:-target}/debug/orderflow"
phase "cargo test (every test but the fault test, which is not a default target)"
cargo test --workspace "$@"
phase "fault tests: crashes, restarts, scale-out and a broker restart against the undisturbed run"
faults_out="$(mktemp)"
cargo test -p orderflow --test faults "$@" -- --nocapture --test-threads=1 2>&1 | tee "$faults_out"
# Every scenario ran and passed: a fault binary that compiles to no test at all (an
# emptied file once did) must not pass as green.
# (The binary also holds the harness's own unit tests, hence "at least".)
scenarios=$(grep -c '^fn fault_' crates/orderflow/tests/faults.rs || true)
passed=$(sed -nE 's/^test result: ok\. ([0-9]+) passed; 0 failed.*/\1/p' "$faults_out" | tail -1)
if (( scenarios < 5 )) || (( ${passed:-0} < scenarios )); then
  log "the fault test did not run and pass its ${scenarios} scenarios (at least 5 expected; ${passed:-no} tests passed)"
  exit 1
fi
rm -f "$faults_out"
phase ""
log "time per phase:"
printf '  %s\n' "${timings[@]}" >&2
