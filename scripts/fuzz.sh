#!/usr/bin/env bash
# Fuzzes every decoder of outside bytes (docs/testing.md#fuzzing): builds the libFuzzer
# targets in fuzz/ and runs each for SECONDS_PER_TARGET seconds (default 60), starting
# from its committed seeds (fuzz/seeds/<target>/) and the corpus earlier runs grew
# (fuzz/corpus/<target>/, not committed). Fails on the first crash: a panic, an
# overflow, a timeout or running out of memory; the input is saved under
# fuzz/artifacts/<target>/ and `cargo fuzz tmin <target> <file>` minimizes it.
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]
#
# Installs cargo-fuzz when it is missing. libFuzzer needs a nightly compiler: the
# nightly toolchain when rustup has one, else the default toolchain with
# RUSTC_BOOTSTRAP=1 (FUZZ_TOOLCHAIN=<toolchain> picks one; any toolchain but a nightly
# gets RUSTC_BOOTSTRAP=1). FUZZ_SANITIZER (default `none`: the workspace has no unsafe
# code, and without one a run executes about twice as many inputs) may be `address`.
# FUZZ_SEED=N fixes libFuzzer's random seed, so that a run retraces the same inputs
# (CI's short run does: a red CI then means a change broke it, and the same command
# finds it again; longer runs without it explore further).
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '==> %s\n' "$*" >&2; }

seconds="${1:-60}"
shift || true
if ! [[ "$seconds" =~ ^[0-9]+$ ]] || ((seconds == 0)); then
  echo "usage: scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]" >&2
  exit 2
fi

export PATH="$HOME/.cargo/bin:$PATH"
if ! command -v cargo-fuzz >/dev/null; then
  log "Installing cargo-fuzz (cargo install cargo-fuzz --locked)"
  cargo install cargo-fuzz --locked
fi

toolchain="${FUZZ_TOOLCHAIN:-}"
if [[ -z "$toolchain" ]] && rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
  toolchain=nightly
fi
cargo=(cargo)
if [[ -n "$toolchain" ]]; then
  cargo=(cargo "+$toolchain")
fi
if [[ "$toolchain" != nightly* ]]; then
  # A stable compiler accepts the unstable flags libFuzzer's instrumentation needs.
  export RUSTC_BOOTSTRAP=1
fi
log "Toolchain: $("${cargo[@]}" --version)${RUSTC_BOOTSTRAP:+ (RUSTC_BOOTSTRAP=1)}"

build=(--release --debug-assertions --sanitizer "${FUZZ_SANITIZER:-none}")
if (($#)); then
  targets=("$@")
else
  mapfile -t targets < <("${cargo[@]}" fuzz list)
fi

log "Building ${#targets[@]} fuzz targets"
started=$SECONDS
"${cargo[@]}" fuzz build "${build[@]}"
log "Built in $((SECONDS - started)) s"

for target in "${targets[@]}"; do
  log "Fuzzing $target for $seconds s"
  mkdir -p "fuzz/corpus/$target"
  # -max_len: past the enricher's 64 KiB limit on a record. -timeout: seconds one
  # input may take. -rss_limit_mb: memory the run may use.
  "${cargo[@]}" fuzz run "${build[@]}" "$target" "fuzz/corpus/$target" "fuzz/seeds/$target" -- \
    -max_total_time="$seconds" -max_len=70000 -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 ${FUZZ_SEED:+-seed="$FUZZ_SEED"} \
    2>"fuzz/$target.log" || {
    tail -n 60 "fuzz/$target.log" >&2
    log "$target: crash (input saved under fuzz/artifacts/$target/, full log in fuzz/$target.log)"
    exit 1
  }
  grep -E '^(Done|stat::number_of_executed_units|stat::peak_rss_mb)' "fuzz/$target.log" | tr '\n' ' ' >&2
  echo >&2
done
log "No crash in ${#targets[@]} targets, $seconds s each"
