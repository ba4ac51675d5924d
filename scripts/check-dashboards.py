#!/usr/bin/env python3
"""Checks the Grafana dashboards under deploy/grafana/ (docs/operations.md#dashboards); run by
scripts/test.sh. Standard library only; needs Debian's `prometheus` (which the test
command installs with promtool).

  1. Provisioning: the datasource file gives Prometheus a fixed uid, the dashboards
     provider reads the directory compose mounts the dashboards into.
  2. Every panel of every dashboard, and every one of its targets, uses that datasource
     uid; every target has an expression, with no Grafana template variable (the
     end-to-end test sends each expression to Prometheus as it is).
  3. Every metric an expression names is one the code declares in
     crates/orderflow-runtime/src/telemetry.rs (histograms with their _bucket, _sum and
     _count series), or one of Prometheus's own (`up`).
  4. Every expression parses: a throwaway `prometheus` on a loopback port, with an empty
     TSDB in a temporary directory, answers each on /api/v1/query (a parse error is
     HTTP 400 `bad_data`).
  5. The checks fail on a broken panel: a copy with a syntax error, with another
     datasource uid, and with an unknown metric must each be refused.
  6. Every metric the alerting and recording rules (deploy/prometheus/alerts.yml) name
     is declared as in 3, so a renamed metric cannot leave an alert that never fires.
"""

import copy
import glob
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request

ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
GRAFANA = os.path.join(ROOT, "deploy/grafana")
DATASOURCES = os.path.join(GRAFANA, "provisioning/datasources/prometheus.yaml")
PROVIDER = os.path.join(GRAFANA, "provisioning/dashboards/orderflow.yaml")
COMPOSE = os.path.join(ROOT, "deploy/compose.yaml")
TELEMETRY = os.path.join(ROOT, "crates/orderflow-runtime/src/telemetry.rs")
RULES = os.path.join(ROOT, "deploy/prometheus/alerts.yml")
HISTOGRAM_SERIES = ("_bucket", "_sum", "_count")


def log(msg):
    print(f"==> {msg}", file=sys.stderr)


def panels(dashboard):
    """Every panel, those inside rows included; rows themselves are not panels."""
    for p in dashboard.get("panels", []):
        if p.get("type") == "row":
            yield from p.get("panels", [])
        else:
            yield p


def declared_metrics():
    with open(TELEMETRY, encoding="utf-8") as f:
        return set(re.findall(r'"(orderflow_[a-z0-9_]+)"', f.read()))


def metric_names(expr):
    """The orderflow_* names in an expression (also inside a `{__name__=~"a|b"}`
    matcher); the only other name the boards use is Prometheus's own `up`."""
    return set(re.findall(r"\borderflow_[a-z0-9_]+\b", expr))


def known(name, declared):
    if name in declared:
        return True
    return any(name.endswith(s) and name[: -len(s)] in declared for s in HISTOGRAM_SERIES)


def static_problems(dashboard, uid, declared):
    """What is wrong with a dashboard short of parsing its expressions."""
    problems = []
    title = dashboard.get("title", "?")
    for p in panels(dashboard):
        where = f"{title} / panel {p.get('id')} '{p.get('title')}'"
        ds = p.get("datasource") or {}
        if ds.get("uid") != uid or ds.get("type") != "prometheus":
            problems.append(f"{where}: datasource {ds!r}, not the provisioned {{'type': 'prometheus', 'uid': '{uid}'}}")
        targets = p.get("targets") or []
        if not targets:
            problems.append(f"{where}: no target")
        for t in targets:
            tw = f"{where} target {t.get('refId')}"
            tds = t.get("datasource") or {}
            if tds.get("uid") != uid:
                problems.append(f"{tw}: datasource {tds!r}, not uid {uid}")
            expr = t.get("expr", "")
            if not expr.strip():
                problems.append(f"{tw}: no expression")
            if "$" in expr:
                problems.append(f"{tw}: template variable in {expr!r} (not sent to Prometheus as it is)")
            for name in sorted(metric_names(expr)):
                if not known(name, declared):
                    problems.append(f"{tw}: metric {name} is not declared in {os.path.relpath(TELEMETRY, ROOT)}")
    return problems


def rule_problems(rules_text, declared):
    """Metrics named in the rules' `expr:` lines (and their continuation lines) that the
    code does not declare."""
    problems = []
    in_expr, indent, alert = False, 0, "?"
    for line in rules_text.splitlines():
        stripped = line.lstrip()
        depth = len(line) - len(stripped)
        m = re.match(r"- (alert|record): *(\S+)", stripped)
        if m:
            alert, in_expr = m.group(2), False
        if in_expr and stripped and depth <= indent:
            in_expr = False
        if stripped.startswith("expr:"):
            in_expr, indent = True, depth
        if in_expr:
            for name in sorted(metric_names(line)):
                if not known(name, declared):
                    problems.append(f"{os.path.relpath(RULES, ROOT)}: {alert}: metric {name} is not declared in {os.path.relpath(TELEMETRY, ROOT)}")
    return problems


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Prometheus:
    """A throwaway Prometheus with an empty TSDB, on a loopback port."""

    def __enter__(self):
        self.dir = tempfile.mkdtemp(prefix="orderflow-dashboards-")
        config = os.path.join(self.dir, "prometheus.yml")
        with open(config, "w") as f:
            f.write("global: {}\n")
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        self.proc = subprocess.Popen(
            [
                shutil.which("prometheus") or "prometheus",
                f"--config.file={config}",
                f"--storage.tsdb.path={os.path.join(self.dir, 'data')}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=open(os.path.join(self.dir, "log"), "w"),
        )
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as r:
                    if r.status == 200:
                        return self
            except (urllib.error.URLError, ConnectionError, OSError):
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                with open(os.path.join(self.dir, "log")) as f:
                    sys.exit(f"prometheus did not start:\n{f.read()[-2000:]}")
            time.sleep(0.2)

    def __exit__(self, *exc):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)

    def parse_error(self, expr):
        """None if Prometheus accepts the expression, else its error."""
        data = urllib.parse.urlencode({"query": expr}).encode()
        try:
            with urllib.request.urlopen(f"{self.url}/api/v1/query", data=data, timeout=30) as r:
                body = json.load(r)
                return None if body.get("status") == "success" else f"{body}"
        except urllib.error.HTTPError as e:
            try:
                body = json.load(e)
                return f"HTTP {e.code} {body.get('errorType')}: {body.get('error')}"
            except ValueError:
                return f"HTTP {e.code}"


def parse_problems(dashboard, prometheus):
    problems = []
    for p in panels(dashboard):
        for t in p.get("targets") or []:
            expr = t.get("expr", "")
            if expr.strip() and "$" not in expr:
                err = prometheus.parse_error(expr)
                if err:
                    problems.append(f"{dashboard.get('title')} / panel {p.get('id')} '{p.get('title')}' target {t.get('refId')}: {err}")
    return problems


def provisioned_uid():
    with open(DATASOURCES) as f:
        text = f.read()
    uids = re.findall(r"^\s+uid:\s*(\S+)\s*$", text, re.M)
    if len(uids) != 1 or "type: prometheus" not in text:
        sys.exit(f"{DATASOURCES}: expected one prometheus datasource with a uid, found uids {uids}")
    return uids[0]


def check_provisioning():
    with open(PROVIDER) as f:
        m = re.search(r"^\s+path:\s*(\S+)\s*$", f.read(), re.M)
    if not m:
        sys.exit(f"{PROVIDER}: no dashboards path")
    with open(COMPOSE) as f:
        compose = f.read()
    for mount in (f"./grafana/dashboards:{m.group(1)}", "./grafana/provisioning:/etc/grafana/provisioning"):
        if mount not in compose:
            sys.exit(f"{COMPOSE} does not mount {mount} (the provisioning reads it)")


def main():
    uid = provisioned_uid()
    check_provisioning()
    declared = declared_metrics()
    files = sorted(glob.glob(os.path.join(GRAFANA, "dashboards/*.json")))
    if not files:
        sys.exit("no dashboard under deploy/grafana/dashboards/")
    dashboards = {}
    for path in files:
        with open(path, encoding="utf-8") as f:
            dashboards[os.path.relpath(path, ROOT)] = json.load(f)
    uids = [d.get("uid") for d in dashboards.values()]
    if len(set(uids)) != len(uids) or None in uids:
        sys.exit(f"dashboards need distinct uids: {uids}")

    log("datasource uid and metric names of every panel")
    problems = [p for d in dashboards.values() for p in static_problems(d, uid, declared)]
    targets = sum(len(p.get("targets") or []) for d in dashboards.values() for p in panels(d))

    log("metric names of every alerting rule")
    with open(RULES, encoding="utf-8") as f:
        rules_text = f.read()
    problems += rule_problems(rules_text, declared)
    if not rule_problems("- alert: Broken\n  expr: |\n    rate(orderflow_no_such_metric_total[5m]) > 0\n", declared):
        sys.exit("the rules check did not refuse an alert naming an undeclared metric")

    log("every expression parses (a throwaway prometheus, empty TSDB)")
    with Prometheus() as prometheus:
        problems += [p for d in dashboards.values() for p in parse_problems(d, prometheus)]
        if problems:
            print("\n".join(problems), file=sys.stderr)
            sys.exit(f"{len(problems)} problems in the dashboards")

        log("the checks refuse a broken panel")
        sample = next(iter(dashboards.values()))
        first = next(panels(sample))
        broken = []
        for what, breakage in [
            ("a syntax error", lambda p: p["targets"][0].update(expr=p["targets"][0]["expr"] + " by (")),
            ("another datasource uid", lambda p: p.update(datasource={"type": "prometheus", "uid": "elsewhere"})),
            ("an unknown metric", lambda p: p["targets"][0].update(expr="sum(orderflow_no_such_metric_total)")),
        ]:
            d = copy.deepcopy(sample)
            d["panels"] = [copy.deepcopy(first)]
            breakage(d["panels"][0])
            if not (static_problems(d, uid, declared) or parse_problems(d, prometheus)):
                broken.append(what)
        if broken:
            sys.exit(f"the checks did not refuse a panel with {', '.join(broken)}")

    print(f"{len(dashboards)} dashboards, {targets} queries: datasource {uid}, declared metrics, every expression parses")


if __name__ == "__main__":
    main()
