#!/usr/bin/env bash
# Checks the Kubernetes manifests (deploy/k8s/), run by scripts/test.sh:
#   - every resource against Kubernetes' own OpenAPI schemas, strictly (unknown fields
#     are errors), with kubernetes-validate from PyPI (installed into a virtualenv under
#     target/ once per machine);
#   - every variable the ConfigMap sets is one an orderflow flag reads;
#   - every probe path is one the services serve.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '==> %s\n' "$*" >&2; }

VENV=target/k8s-venv
if [[ ! -x "$VENV/bin/kubernetes-validate" ]]; then
  log "Installing kubernetes-validate 1.37.0 into $VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check kubernetes-validate==1.37.0
fi

resources=(deploy/k8s/config.yaml deploy/k8s/enricher.yaml deploy/k8s/aggregator.yaml deploy/k8s/merchants-load.yaml)
# kustomization.yaml must list exactly these.
for r in "${resources[@]}"; do
  grep -q -- "- $(basename "$r")$" deploy/k8s/kustomization.yaml || { echo "deploy/k8s/kustomization.yaml does not list $(basename "$r")" >&2; exit 1; }
done
log "kubernetes-validate --strict (Kubernetes 1.37 schemas)"
"$VENV/bin/kubernetes-validate" --strict --quiet "${resources[@]}"

log "the ConfigMap's variables are orderflow's"
keys=$(awk '/^data:/{d=1; next} d && /^  [A-Z_]+:/{sub(":.*", "", $1); print $1}' deploy/k8s/config.yaml)
[[ -n "$keys" ]] || { echo "no variables found in deploy/k8s/config.yaml" >&2; exit 1; }
for k in $keys; do
  [[ $k == RUST_LOG ]] && continue
  grep -rqF "env = \"$k\"" crates/orderflow/src || { echo "deploy/k8s/config.yaml sets $k, which no flag reads" >&2; exit 1; }
done
for k in $(grep -ho 'name: ORDERFLOW_[A-Z_]*' deploy/k8s/*.yaml | awk '{print $2}' | sort -u); do
  grep -rqF "env = \"$k\"" crates/orderflow/src || { echo "deploy/k8s sets $k, which no flag reads" >&2; exit 1; }
done

log "the probes' paths are served"
for path in $(grep -ho 'path: /[a-z]*' deploy/k8s/*.yaml | awk '{print $2}' | sort -u); do
  grep -qF "\"$path\"" crates/orderflow-runtime/src/telemetry.rs || { echo "deploy/k8s probes $path, which no service serves" >&2; exit 1; }
done
echo "deploy/k8s: ${#resources[@]} files valid; variables and probe paths match the code"
