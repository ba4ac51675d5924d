#!/usr/bin/env python3
"""Checks the documentation (docs/README.md); run by scripts/test.sh.

    scripts/check-docs.py [ORDERFLOW_BINARY]    # default: the one `cargo build -p orderflow` makes

Fails (exit 1, one line per problem) unless:
  1. every relative link and #anchor in README.md, docs/**/*.md and benches/README.md
     resolves: the file exists, and the anchor is a heading's GitHub slug there
     (http(s) links are not fetched; links inside code are not links);
  2. every alert of deploy/prometheus/alerts.yml has a runbook_url of BASE#<its slug>,
     BASE being deploy/prometheus/runbook-base-url, and docs/runbook.md has a heading
     that is exactly the alert's name;
  3. every long flag that `--help` prints, for orderflow and each subcommand down the
     tree, appears in README.md or docs/ (--help and --version aside);
  4. every metric name declared in crates/orderflow-runtime/src/telemetry.rs appears in
     docs/metrics.md.
Standard library only.
"""

import json
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", ROOT / "benches/README.md", *sorted((ROOT / "docs").rglob("*.md"))]
RUNBOOK = ROOT / "docs/runbook.md"
ALERTS = ROOT / "deploy/prometheus/alerts.yml"
BASE_FILE = ROOT / "deploy/prometheus/runbook-base-url"
TELEMETRY = ROOT / "crates/orderflow-runtime/src/telemetry.rs"
METRICS_DOC = ROOT / "docs/metrics.md"

# An inline link or image, [text](target) or [text](target "title"); the target has no
# spaces or parentheses (ours never do).
LINK = re.compile(r"\[[^\]]*\]\(([^()\s]+)(?:\s+\"[^\"]*\")?\)")
# An inline code span: a run of backticks, anything, the same run again.
CODE_SPAN = re.compile(r"(`+).*?\1")
# An ATX heading: 1 to 6 '#', a space, the text, optional closing '#'s.
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")

problems = []


def problem(where, message):
    problems.append(f"{where}: {message}")


def rel(path):
    return path.relative_to(ROOT).as_posix()


def prose_lines(path):
    """(line number, line) of a Markdown file outside fenced code blocks."""
    fence = None
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        marker = line.lstrip()[:3]
        if marker in ("```", "~~~"):
            if fence is None:
                fence = marker
            elif marker == fence:
                fence = None
            continue
        if fence is None:
            yield number, line


def slug(text):
    """GitHub's heading anchor: link text kept, lower case, every character but letters,
    digits, '_', '-' and spaces dropped, spaces to '-'."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)
    text = re.sub(r"[^\w\- ]", "", text.lower())
    return text.replace(" ", "-")


_anchors = {}


def anchors(path):
    """Every heading anchor of a Markdown file, duplicates numbered -1, -2, ... as GitHub does."""
    if path not in _anchors:
        seen, found = {}, set()
        for _, line in prose_lines(path):
            m = HEADING.match(line)
            if m:
                base = slug(m.group(2))
                n = seen.get(base, 0)
                seen[base] = n + 1
                found.add(base if n == 0 else f"{base}-{n}")
        _anchors[path] = found
    return _anchors[path]


def headings(path):
    return {m.group(2) for _, line in prose_lines(path) if (m := HEADING.match(line))}


def check_links():
    count = 0
    for doc in DOCS:
        for number, line in prose_lines(doc):
            for target in LINK.findall(CODE_SPAN.sub("", line)):
                count += 1
                if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
                    continue
                path_part, _, anchor = target.partition("#")
                dest = (doc.parent / path_part).resolve() if path_part else doc
                where = f"{rel(doc)}:{number}"
                if not dest.exists():
                    problem(where, f"link to {target}: {path_part} does not exist")
                elif anchor and dest.suffix != ".md":
                    problem(where, f"link to {target}: an anchor into a file that is not Markdown")
                elif anchor and anchor not in anchors(dest):
                    problem(where, f"link to {target}: {rel(dest)} has no heading with anchor #{anchor}")
    return count


def check_alerts():
    base = BASE_FILE.read_text(encoding="utf-8").strip()
    names = headings(RUNBOOK)
    alerts = []  # [name, line, runbook_url or None]; each runbook_url belongs to the alert above it
    for number, line in enumerate(ALERTS.read_text(encoding="utf-8").splitlines(), 1):
        if m := re.match(r"^\s*- alert:\s*(\S+)\s*$", line):
            alerts.append([m.group(1), number, None])
        elif (m := re.match(r"^\s*runbook_url:\s*(\S+)\s*$", line)) and alerts:
            alerts[-1][2] = m.group(1)
    if not alerts:
        problem(rel(ALERTS), "no alert found")
    for name, number, url in alerts:
        where = f"{rel(ALERTS)}:{number}"
        want = f"{base}#{slug(name)}"
        if url != want:
            problem(where, f"{name}: runbook_url is {url}, not {want} (scripts/set-runbook-base-url.sh sets the base)")
        if name not in names:
            problem(rel(RUNBOOK), f"no heading '{name}' for the alert of that name")
    return len(alerts)


def help_texts(command, path=()):
    """(subcommand path, --help output) of the binary and every subcommand below it."""
    out = subprocess.run([*command, *path, "--help"], cwd=ROOT, capture_output=True, text=True)
    if out.returncode != 0:
        problem(" ".join(["orderflow", *path, "--help"]), f"exit {out.returncode}: {out.stderr.strip()[:300]}")
        return
    yield path, out.stdout
    # clap lists subcommands under "Commands:", one a line (two-space indent, name first), up to a blank line.
    listing = out.stdout.split("\nCommands:\n", 1)
    for line in listing[1].split("\n\n", 1)[0].splitlines() if len(listing) == 2 else []:
        sub = line.split()[0]
        if sub != "help":
            yield from help_texts(command, (*path, sub))


def check_flags(command):
    text = "\n".join(p.read_text(encoding="utf-8") for p in DOCS if p != ROOT / "benches/README.md")
    documented = set(re.findall(r"(?<![\w-])--[a-z0-9][a-z0-9-]*", text))
    flags = {}
    for path, out in help_texts(command):
        for line in out.splitlines():
            if line.lstrip().startswith("-"):  # an option's own line: "  -b, --brokers <BROKERS>"
                for flag in re.findall(r"(?<![\w-])--[a-z0-9][a-z0-9-]*", line):
                    flags.setdefault(flag, " ".join(["orderflow", *path]))
    for flag, where in sorted(flags.items()):
        if flag not in ("--help", "--version") and flag not in documented:
            problem(f"{where} --help", f"{flag} is not documented in README.md or docs/")
    return len(flags)


def check_metrics():
    declared = re.findall(r'^pub const \w+: &str = "(orderflow_\w+)";', TELEMETRY.read_text(encoding="utf-8"), re.M)
    if not declared:
        problem(rel(TELEMETRY), "no metric constant found (pub const NAME: &str = \"orderflow_...\";)")
    text = METRICS_DOC.read_text(encoding="utf-8")
    for name in declared:
        if not re.search(rf"(?<!\w){name}(?!\w)", text):
            problem(rel(METRICS_DOC), f"metric {name} (declared in {rel(TELEMETRY)}) is not documented")
    return len(declared)


def built_binary():
    """Builds orderflow (debug) and returns its path, as cargo reports it (CARGO_TARGET_DIR too)."""
    out = subprocess.run(["cargo", "build", "-q", "-p", "orderflow", "--message-format=json"],
                         cwd=ROOT, capture_output=True, text=True, check=True)
    for line in out.stdout.splitlines():
        msg = json.loads(line)
        if msg.get("reason") == "compiler-artifact" and msg["target"]["name"] == "orderflow" and msg.get("executable"):
            return msg["executable"]
    sys.exit("check-docs: cargo build -p orderflow reported no orderflow executable")


def main():
    command = sys.argv[1:] or [built_binary()]
    links = check_links()
    alerts = check_alerts()
    flags = check_flags(command)
    metrics = check_metrics()
    for p in problems:
        print(p, file=sys.stderr)
    if problems:
        print(f"check-docs: {len(problems)} problem(s)", file=sys.stderr)
        return 1
    print(f"check-docs: {links} links in {len(DOCS)} files, {alerts} runbook links, {flags} flags, {metrics} metrics: all documented")
    return 0


if __name__ == "__main__":
    sys.exit(main())
