"""Renders each Grafana dashboard under deploy/grafana/dashboards/ to one PNG from a
running Prometheus, with the panels' own queries: what Grafana would show, for machines
where Grafana itself is not installed. Run by scripts/render-boards.sh (which makes the
virtualenv with matplotlib); see docs/operations.md#dashboards.

usage: render_boards.py PROMETHEUS_URL OUT_DIR START END
  START and END are Unix seconds; range panels use /api/v1/query_range over them,
  stat, bar gauge and table panels show the value at END (as Grafana's "last").
"""

import glob
import json
import math
import os
import re
import sys
import urllib.parse
import urllib.request

import matplotlib

matplotlib.use("Agg")
import matplotlib.dates as mdates  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
from datetime import datetime, timezone  # noqa: E402

ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
BG, PANEL, FG, GRID = "#111217", "#181b1f", "#ccccdc", "#2c3235"
COLORS = ["#73bf69", "#f2cc0c", "#5794f2", "#ff9830", "#f2495c", "#b877d9", "#8ab8ff", "#ff7383", "#fade2a", "#96d98d"]


def get(url, path, params):
    with urllib.request.urlopen(f"{url}{path}?{urllib.parse.urlencode(params)}", timeout=60) as r:
        body = json.load(r)
    if body.get("status") != "success":
        raise RuntimeError(body)
    return body["data"]


def legend(fmt, labels):
    if not fmt:
        return ",".join(f"{k}={v}" for k, v in sorted(labels.items()) if k != "__name__") or "value"
    return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: labels.get(m.group(1), ""), fmt)


def fmt_value(v, unit, decimals=None, short=False):
    """A value as Grafana shows it: the unit's prefix or suffix; `short` abbreviates
    (K, M, B) for axes."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "NaN"
    if unit == "dateTimeAsIso":
        return datetime.fromtimestamp(v / 1000, timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
    if unit == "s":
        return duration(v)
    if unit == "bytes":
        for scale, name in ((2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB")):
            if abs(v) >= scale:
                return f"{v / scale:.3g} {name}"
        return f"{v:.0f} B"
    prefix = unit[len("prefix:"):] if unit and unit.startswith("prefix:") else ""
    suffix = ""
    if short:
        for scale, letter in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
            if abs(v) >= scale:
                return f"{prefix}{v / scale:.3g}{letter}{suffix}"
        return f"{prefix}{v:.3g}{suffix}"
    if decimals is None:
        decimals = 0 if float(v).is_integer() else 2 if abs(v) >= 1 else 3
    return f"{prefix}{v:,.{decimals}f}{suffix}"


def duration(v):
    """Seconds as Grafana's `s` unit shows them: ms, s, min, hour, day, year."""
    a = abs(v)
    for scale, name in ((365 * 86400, " year"), (86400, " day"), (3600, " hour"), (60, " min"), (1, " s")):
        if a >= scale:
            return f"{v / scale:.4g}{name}"
    return f"{v * 1000:.3g} ms" if a else "0"


def draw_timeseries(ax, url, panel, start, end, step):
    unit = panel["fieldConfig"]["defaults"].get("unit", "")
    n = 0
    for t in panel["targets"]:
        for s in get(url, "/api/v1/query_range", {"query": t["expr"], "start": start, "end": end, "step": step})["result"]:
            xs = [datetime.fromtimestamp(float(p[0]), timezone.utc) for p in s["values"]]
            ys = [float(p[1]) for p in s["values"]]
            ax.plot(xs, ys, color=COLORS[n % len(COLORS)], linewidth=1.3, label=legend(t.get("legendFormat"), s["metric"])[:40])
            n += 1
    if n == 0:
        no_value = panel["fieldConfig"]["defaults"].get("noValue")
        ax.text(0.5, 0.5, no_value if no_value is not None else "No data", color=FG, ha="center", va="center",
                fontsize=18 if no_value else 11, transform=ax.transAxes)
        ax.set_xticks([])
        ax.set_yticks([])
        return
    ax.set_xlim(datetime.fromtimestamp(start, timezone.utc), datetime.fromtimestamp(end, timezone.utc))
    ax.xaxis.set_major_formatter(mdates.DateFormatter("%H:%M:%S"))
    ax.tick_params(colors=FG, labelsize=7)
    ax.grid(color=GRID, linewidth=0.5)
    ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: fmt_value(v, unit, short=True)))
    ax.legend(fontsize=6, loc="upper left", facecolor=PANEL, edgecolor=GRID, labelcolor=FG, ncol=2 if n > 6 else 1)


def instant(url, t, end):
    return get(url, "/api/v1/query", {"query": t["expr"], "time": end})["result"]


def draw_stat(ax, url, panel, end):
    d = panel["fieldConfig"]["defaults"]
    r = instant(url, panel["targets"][0], end)
    text = fmt_value(float(r[0]["value"][1]), d.get("unit", ""), d.get("decimals")) if r else d.get("noValue", "No data")
    color = d.get("color", {}).get("fixedColor", "green")
    if d.get("color", {}).get("mode") == "thresholds" and r:
        v = float(r[0]["value"][1])
        for step in d.get("thresholds", {}).get("steps", []):
            if step["value"] is None or v >= step["value"]:
                color = step["color"]
    color = {"orange": "#ff9830", "green": "#73bf69", "red": "#f2495c"}.get(color, color)
    ax.text(0.5, 0.45, text, color=color if r else FG, ha="center", va="center", fontsize=30 if len(text) < 12 else 20,
            fontweight="bold", transform=ax.transAxes)
    ax.set_xticks([])
    ax.set_yticks([])


def draw_bargauge(ax, url, panel, end):
    unit = panel["fieldConfig"]["defaults"].get("unit", "")
    rows = []
    for t in panel["targets"]:
        for s in instant(url, t, end):
            rows.append((legend(t.get("legendFormat"), s["metric"]), float(s["value"][1])))
    rows.sort(key=lambda r: r[1])
    if not rows:
        ax.text(0.5, 0.5, "No data", color=FG, ha="center", va="center", transform=ax.transAxes)
        ax.set_xticks([])
        ax.set_yticks([])
        return
    ys = range(len(rows))
    ax.barh(ys, [r[1] for r in rows], color=[COLORS[i % len(COLORS)] for i in ys])
    ax.set_yticks(list(ys), [r[0] for r in rows], color=FG, fontsize=8)
    top = max(r[1] for r in rows) or 1
    for y, (_, v) in zip(ys, rows):
        ax.text(v + top * 0.01, y, fmt_value(v, unit), color=FG, va="center", fontsize=8)
    ax.set_xlim(0, top * 1.35)
    ax.set_xticks([])


def draw_table(ax, url, panel, end):
    rows = []
    for t in panel["targets"]:
        for s in instant(url, t, end):
            rows.append(s["metric"] | {"value": s["value"][1]})
    ax.set_xticks([])
    ax.set_yticks([])
    if not rows:
        ax.text(0.5, 0.5, "No data", color=FG, ha="center", va="center", transform=ax.transAxes)
        return
    rename = {}
    for tr in panel.get("transformations", []):
        rename |= tr.get("options", {}).get("renameByName", {})
    cols = sorted({k for r in rows for k in r if k != "value"}) + ["value"]
    rows.sort(key=lambda r: -float(r["value"]))
    shown = rows[:14]
    cells = [[r.get(c, "") if c != "value" else f"{float(r[c]):,.0f}" for c in cols] for r in shown]
    header = [rename.get("Value", "value") if c == "value" else c for c in cols]
    table = ax.table(cellText=cells, colLabels=header, loc="upper center", cellLoc="left")
    table.auto_set_font_size(False)
    table.set_fontsize(7)
    for (row, _), cell in table.get_celld().items():
        cell.set_facecolor(PANEL if row else GRID)
        cell.set_edgecolor(GRID)
        cell.get_text().set_color(FG)
    if len(rows) > len(shown):
        ax.text(0.99, 0.01, f"{len(rows) - len(shown)} more rows", color=FG, ha="right", fontsize=7, transform=ax.transAxes)


def render(url, path, out, start, end):
    with open(path, encoding="utf-8") as f:
        d = json.load(f)
    items = []
    for p in d["panels"]:
        items.append(p)
        if p["type"] == "row":
            items.extend(p.get("panels", []))
    height = max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in items)
    unit_h = 0.42  # inches per grid row
    fig = plt.figure(figsize=(24 * 0.85, height * unit_h + 0.8), facecolor=BG)
    top = 1 - 0.8 / (height * unit_h + 0.8)
    span = f"{datetime.fromtimestamp(start, timezone.utc):%Y-%m-%d %H:%M:%S} to {datetime.fromtimestamp(end, timezone.utc):%H:%M:%S} UTC"
    fig.text(0.01, 1 - 0.35 / (height * unit_h + 0.8), f"{d['title']}    ({span}, rendered from Prometheus with the panels' queries)",
             color=FG, fontsize=14, fontweight="bold", va="center")
    step = max(1, int((end - start) / 300))
    for p in items:
        g = p["gridPos"]
        x0, w = g["x"] / 24, g["w"] / 24
        y1 = top * (1 - g["y"] / height)
        h = top * g["h"] / height
        if p["type"] == "row":
            fig.text(x0 + 0.005, y1 - h / 2, p["title"], color=FG, fontsize=12, fontweight="bold", va="center")
            continue
        pad_x, pad_y = 0.004, 0.012 * 30 / height
        # Graphs keep room on the left for their axis labels, inside the panel.
        left = {"timeseries": 0.028, "bargauge": 0.055}.get(p["type"], 0)
        ax = fig.add_axes([x0 + pad_x + left, y1 - h + pad_y, w - 2 * pad_x - left, h - 2 * pad_y - 0.028 * 30 / height])
        ax.set_facecolor(PANEL)
        for s in ax.spines.values():
            s.set_color(GRID)
        fig.text(x0 + pad_x, y1 - pad_y * 0.6, p["title"], color=FG, fontsize=9, fontweight="bold", va="top")
        try:
            {"timeseries": lambda: draw_timeseries(ax, url, p, start, end, step), "stat": lambda: draw_stat(ax, url, p, end),
             "bargauge": lambda: draw_bargauge(ax, url, p, end), "table": lambda: draw_table(ax, url, p, end)}[p["type"]]()
        except Exception as e:  # a panel that fails shows its error, as Grafana does
            ax.text(0.5, 0.5, f"error: {e}"[:200], color="#f2495c", ha="center", va="center", fontsize=7, wrap=True, transform=ax.transAxes)
    name = os.path.join(out, os.path.splitext(os.path.basename(path))[0] + ".png")
    fig.savefig(name, dpi=80, facecolor=BG)
    plt.close(fig)
    print(name)


def main():
    if len(sys.argv) != 5:
        sys.exit(__doc__)
    url, out, start, end = sys.argv[1].rstrip("/"), sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    os.makedirs(out, exist_ok=True)
    for path in sorted(glob.glob(os.path.join(ROOT, "deploy/grafana/dashboards/*.json"))):
        render(url, path, out, start, end)


if __name__ == "__main__":
    main()
