#!/usr/bin/env bash
# Checks the Kubernetes manifests (deploy/k8s/), run by scripts/test.sh:
#   - every resource against Kubernetes' own OpenAPI schemas, strictly (unknown fields
#     are errors), with kubernetes-validate from PyPI (installed into a virtualenv under
#     target/ once per machine);
#   - every variable the ConfigMap sets is one an orderflow flag reads;
#   - every probe path is one the services serve;
#   - per Deployment: the scrape annotation's port is the metrics port the ConfigMap's
#     ORDERFLOW_METRICS_ADDR sets, and a container port named `metrics`; every port a
#     probe or Service names is one the pod declares; every Secret-backed file an
#     ORDERFLOW_*_FILE variable names is mounted (ingest's tokens).
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '==> %s\n' "$*" >&2; }

VENV=target/k8s-venv
if [[ ! -x "$VENV/bin/kubernetes-validate" ]]; then
  log "Installing kubernetes-validate 1.37.0 into $VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check kubernetes-validate==1.37.0
fi

resources=(deploy/k8s/config.yaml deploy/k8s/enricher.yaml deploy/k8s/aggregator.yaml deploy/k8s/ingest.yaml deploy/k8s/merchants-load.yaml)
# kustomization.yaml must list exactly these.
for r in "${resources[@]}"; do
  grep -q -- "- $(basename "$r")$" deploy/k8s/kustomization.yaml || { echo "deploy/k8s/kustomization.yaml does not list $(basename "$r")" >&2; exit 1; }
done
listed=$(grep -c -- '^  - [a-z-]*\.yaml$' deploy/k8s/kustomization.yaml)
[[ $listed == "${#resources[@]}" ]] || { echo "deploy/k8s/kustomization.yaml lists $listed files, this script checks ${#resources[@]}" >&2; exit 1; }
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
log "per Deployment: metrics port, named ports, mounted files"
"$VENV/bin/python" - "${resources[@]}" <<'PY'
import sys, yaml
docs = [d for f in sys.argv[1:] for d in yaml.safe_load_all(open(f)) if d]
config = next(d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "orderflow")["data"]
metrics_port = int(config["ORDERFLOW_METRICS_ADDR"].rsplit(":", 1)[1])
problems = []
pods = {}
for d in docs:
    if d["kind"] != "Deployment":
        continue
    name = d["metadata"]["name"]
    pod = d["spec"]["template"]
    pods[name] = pod
    ann = pod["metadata"].get("annotations", {})
    if ann.get("prometheus.io/port") != str(metrics_port):
        problems.append(f"{name}: prometheus.io/port is {ann.get('prometheus.io/port')}, ORDERFLOW_METRICS_ADDR's port is {metrics_port}")
    for c in pod["spec"]["containers"]:
        ports = {p["name"]: p["containerPort"] for p in c.get("ports", [])}
        if ports.get("metrics") != metrics_port:
            problems.append(f"{name}/{c['name']}: no container port `metrics` {metrics_port}")
        for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
            port = c.get(probe, {}).get("httpGet", {}).get("port")
            if port is not None and port not in ports:
                problems.append(f"{name}/{c['name']}: {probe} names port {port}, not declared")
        env = {e["name"]: e.get("value") for e in c.get("env", [])}
        for k, v in env.items():
            if not (k.startswith("ORDERFLOW_") and k.endswith("_ADDR") or k.endswith("_LISTEN")) or v is None:
                continue
            port = int(v.rsplit(":", 1)[1])
            if not v.startswith("0.0.0.0:"):
                problems.append(f"{name}/{c['name']}: {k}={v} is not reachable from outside the pod")
            if port not in ports.values():
                problems.append(f"{name}/{c['name']}: {k} listens on {port}, no container port")
        mounts = {m["mountPath"].rstrip("/"): m["name"] for m in c.get("volumeMounts", [])}
        volumes = {v["name"]: v for v in pod["spec"].get("volumes", [])}
        for k, v in env.items():
            if not (k.startswith("ORDERFLOW_") and k.endswith("_FILE")) or v is None:
                continue
            directory, file = v.rsplit("/", 1)
            vol = volumes.get(mounts.get(directory))
            if vol is None:
                problems.append(f"{name}/{c['name']}: {k}={v}, but nothing is mounted at {directory}")
                continue
            items = vol.get("secret", vol.get("configMap", {})).get("items")
            if items is not None and file not in [i["path"] for i in items]:
                problems.append(f"{name}/{c['name']}: {k}={v}, but volume {vol['name']} holds no {file}")
for d in docs:
    if d["kind"] != "Service":
        continue
    sel = d["spec"]["selector"]
    matched = [n for n, p in pods.items() if all(p["metadata"]["labels"].get(k) == v for k, v in sel.items())]
    if not matched:
        problems.append(f"Service {d['metadata']['name']}: selects no Deployment's pods")
    for p in d["spec"]["ports"]:
        for n in matched:
            names = {q["name"] for c in pods[n]["spec"]["containers"] for q in c.get("ports", [])}
            if isinstance(p["targetPort"], str) and p["targetPort"] not in names:
                problems.append(f"Service {d['metadata']['name']}: targetPort {p['targetPort']} is not a port of {n}")
for p in problems:
    print(p, file=sys.stderr)
sys.exit(1 if problems else 0)
PY
echo "deploy/k8s: ${#resources[@]} files valid; variables, probe paths, ports and mounts match the code"
