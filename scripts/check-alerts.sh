#!/usr/bin/env bash
# Checks the Prometheus config and alerting rules under deploy/ (docs/operations.md#alerts);
# part of scripts/test.sh, which installs promtool (Debian's prometheus package, and
# amtool with prometheus-alertmanager) when they are missing. A few seconds,
# plus about two per alert for the last step.
#   1. promtool check config / check rules: both parse, and the config finds the rules;
#      amtool check-config: deploy/alertmanager.yml parses, and routes each severity
#      to its receiver.
#   2. promtool test rules: every alert's unit tests (alerts_test.yml), firing and not.
#   3. every runbook_url is BASE#<alert name in lower case>, BASE being the one line of
#      deploy/prometheus/runbook-base-url, and docs/runbook.md has a heading of that name.
#   4. every alert has a test that needs it to fire: with the alert's expression made
#      one that never fires, alerts_test.yml must fail.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '==> %s\n' "$*" >&2; }
rules=deploy/prometheus/alerts.yml
tests=deploy/prometheus/alerts_test.yml

log "promtool check config, check rules, test rules"
promtool check config deploy/prometheus.yml
promtool check rules "$rules"
promtool test rules "$tests"

log "amtool check-config, and the routes: severity=page pages, the rest makes tickets"
amtool check-config deploy/alertmanager.yml >/dev/null
[[ $(amtool config routes test --config.file deploy/alertmanager.yml severity=page 2>/dev/null) == pager ]] || { echo "deploy/alertmanager.yml: severity=page does not reach the pager receiver" >&2; exit 1; }
[[ $(amtool config routes test --config.file deploy/alertmanager.yml severity=ticket 2>/dev/null) == tickets ]] || { echo "deploy/alertmanager.yml: severity=ticket does not reach the tickets receiver" >&2; exit 1; }

alerts=$(sed -n 's/^ *- alert: *\([A-Za-z0-9_]*\) *$/\1/p' "$rules")
[[ -n "$alerts" ]] || { echo "no alert found in $rules" >&2; exit 1; }

base=$(<deploy/prometheus/runbook-base-url)
log "runbook links: $base#<alert>, each a heading of docs/runbook.md"
for alert in $alerts; do
  anchor=$(printf '%s' "$alert" | tr '[:upper:]' '[:lower:]')
  # The alert's runbook_url: the first one after its `- alert:` line.
  url=$(sed -n "/^ *- alert: *$alert *\$/,\$ s/^ *runbook_url: *//p" "$rules" | head -n 1)
  [[ "$url" == "$base#$anchor" ]] || { echo "$alert: runbook_url is '$url', not $base#$anchor (scripts/set-runbook-base-url.sh sets them all)" >&2; exit 1; }
  grep -qE "^#+ +$alert *\$" docs/runbook.md || { echo "$alert: docs/runbook.md has no heading '$alert' (anchor #$anchor)" >&2; exit 1; }
done

log "each alert's tests fail when it never fires"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cp "$tests" "$tmp/"
for alert in $alerts; do
  # Replaces the alert's expr (one line, or a block of deeper-indented lines after `|`).
  awk -v alert="$alert" '
    /^ *- alert: / { mine = ($3 == alert) }
    skip && match($0, /^ */) && RLENGTH > indent { next }
    { skip = 0 }
    mine && /^ *expr:/ { match($0, /^ */); indent = RLENGTH; print substr($0, 1, indent) "expr: vector(1) < 0"; skip = 1; next }
    { print }
  ' "$rules" >"$tmp/alerts.yml"
  if ! grep -q 'expr: vector(1) < 0' "$tmp/alerts.yml"; then
    echo "$alert: could not replace its expr" >&2
    exit 1
  fi
  promtool check rules "$tmp/alerts.yml" >/dev/null
  if promtool test rules "$tmp/$(basename "$tests")" >/dev/null 2>&1; then
    echo "$alert: $tests still passes when the alert never fires: add a test where it fires" >&2
    exit 1
  fi
done
echo "$(wc -w <<<"$alerts") alerts: each has a runbook entry and a test that needs it to fire"
