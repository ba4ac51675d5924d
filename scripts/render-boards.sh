#!/usr/bin/env bash
# Renders the Grafana dashboards (deploy/grafana/dashboards/) to PNG from a running
# Prometheus, with each panel's own queries (docs/operations.md#dashboards): one picture per board,
# laid out like Grafana's grid. matplotlib is installed from PyPI into a virtualenv under
# target/ once per machine.
#
#   scripts/render-boards.sh [PROMETHEUS_URL] [MINUTES_BACK | START END] [OUT_DIR]
#   defaults: http://127.0.0.1:9090, the last 15 minutes, target/boards/
set -euo pipefail
cd "$(dirname "$0")/.."

url=${1:-http://127.0.0.1:9090}
now=$(date +%s)
if [[ $# -ge 4 ]]; then start=$2 end=$3 out=$4
else start=$((now - ${2:-15} * 60)) end=$now out=${3:-target/boards}
fi

VENV=target/boards-venv
if [[ ! -x "$VENV/bin/python" ]] || ! "$VENV/bin/python" -c 'import matplotlib' 2>/dev/null; then
  printf '==> Installing matplotlib 3.9.2 into %s\n' "$VENV" >&2
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check matplotlib==3.9.2
fi
"$VENV/bin/python" scripts/render_boards.py "$url" "$out" "$start" "$end"
