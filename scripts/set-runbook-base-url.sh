#!/usr/bin/env bash
# Points every alert's runbook_url at another copy of docs/runbook.md:
#   scripts/set-runbook-base-url.sh https://docs.example.com/orderflow/runbook.md
# BASE is the runbook's absolute URL without an anchor; each runbook_url becomes
# BASE#<alert name in lower case>. Rewrites deploy/prometheus/runbook-base-url (where the
# base is kept), the rules (alerts.yml) and their tests' expected annotations
# (alerts_test.yml). Run scripts/check-alerts.sh afterwards.
set -euo pipefail
cd "$(dirname "$0")/.."

base=${1:-}
if [[ $# -ne 1 || ! "$base" =~ ^https?://[^[:space:]#]+$ ]]; then
  echo "usage: $0 BASE   (an http(s) URL without spaces or '#', e.g. https://docs.example.com/orderflow/runbook.md)" >&2
  exit 2
fi

# The base as a sed replacement: backslash, '&' and the '|' delimiter escaped.
escaped=$(printf '%s' "$base" | sed -e 's/[\\&|]/\\&/g')
for f in deploy/prometheus/alerts.yml deploy/prometheus/alerts_test.yml; do
  # `runbook_url: ANYTHING#anchor` keeps its indentation and anchor.
  sed -i -e "s|^\( *runbook_url: *\)[^#]*#\([A-Za-z0-9_-]*\) *\$|\1$escaped#\2|" "$f"
done
printf '%s\n' "$base" >deploy/prometheus/runbook-base-url
echo "runbook_url base is now $base ($(grep -c 'runbook_url:' deploy/prometheus/alerts.yml) alerts)"
