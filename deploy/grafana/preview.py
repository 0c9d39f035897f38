"""What the dashboard shows, drawn with matplotlib from a real Prometheus: every panel's queries run
over a time range, one subplot each (no Grafana needed).

    python -m deploy.grafana.preview --prometheus http://127.0.0.1:9090 --minutes 15 --out preview.png
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import httpx
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from deploy.grafana.dashboard import PANELS, Panel, substitute


def query_range(prom: str, expr: str, start: float, end: float, step: float) -> list[dict]:
    """The matrix a range query returns (one entry per series)."""
    body = httpx.get(
        f"{prom}/api/v1/query_range", params={"query": expr, "start": start, "end": end, "step": step}
    ).json()
    if body["status"] != "success":
        raise RuntimeError(f"{expr}: {body}")
    return body["data"]["result"]


def _legend(template: str, labels: dict[str, str]) -> str:
    for k, v in labels.items():
        template = template.replace("{{" + k + "}}", v)
    return template


def _draw(ax: plt.Axes, panel: Panel, series: list[tuple[str, list[dict]]], t0: float) -> int:
    """Draw one panel's series; returns how many finite points it drew."""
    points = 0
    if panel.kind == "heatmap":
        (legend, result), = series
        rows = sorted(result, key=lambda s: float(s["metric"]["le"]))
        times = sorted({float(t) for s in rows for t, _ in s["values"]})
        grid = [[0.0] * len(times) for _ in rows]
        index = {t: i for i, t in enumerate(times)}
        for r, s in enumerate(rows):
            for t, v in s["values"]:
                grid[r][index[float(t)]] = float(v) if math.isfinite(float(v)) else 0.0
                points += 1
        # cumulative buckets → per-bucket counts
        for r in range(len(rows) - 1, 0, -1):
            grid[r] = [max(a - b, 0.0) for a, b in zip(grid[r], grid[r - 1], strict=True)]
        if times:
            ax.pcolormesh([t - t0 for t in times], range(len(rows)), grid, shading="nearest", cmap="viridis")
            ax.set_yticks(range(len(rows)), [s["metric"]["le"] for s in rows], fontsize=5)
        return points
    for legend, result in series:
        for s in result:
            xs = [float(t) - t0 for t, v in s["values"] if math.isfinite(float(v))]
            ys = [float(v) for _, v in s["values"] if math.isfinite(float(v))]
            points += len(xs)
            ax.plot(xs, ys, label=_legend(legend, s["metric"]), linewidth=1)
    if points:
        ax.legend(fontsize=5, loc="upper left")
    return points


def render(
    prom: str, out: Path, start: float, end: float, model: str = ".*", scrape_s: float = 15
) -> dict[str, int]:
    """Draw every panel over [start, end] into `out`; returns the finite points each panel drew.
    `$__rate_interval` is Grafana's: max(step + scrape interval, 4 × scrape interval)."""
    step = max((end - start) / 300, 1.0)
    rate_interval = f"{max(step + scrape_s, 4 * scrape_s):g}s"
    cols = 4
    fig, axes = plt.subplots(math.ceil(len(PANELS) / cols), cols, figsize=(20, 2.6 * len(PANELS) / cols))
    drawn: dict[str, int] = {}
    for ax, panel in zip(axes.flat, PANELS, strict=False):
        series = [
            (legend, query_range(prom, substitute(expr, model, ".*", rate_interval), start, end, step))
            for expr, legend in panel.targets
        ]
        drawn[panel.title] = _draw(ax, panel, series, start)
        ax.set_title(f"{panel.title} [{panel.unit}]", fontsize=9)
        ax.tick_params(labelsize=6)
    for ax in axes.flat[len(PANELS) :]:
        ax.axis("off")
    since = time.strftime("%H:%M:%S", time.gmtime(start))
    fig.suptitle(f"eqserve dashboard preview (x: seconds since {since} UTC)")
    fig.tight_layout()
    fig.savefig(out, dpi=80)
    plt.close(fig)
    return drawn


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prometheus", default="http://127.0.0.1:9090")
    parser.add_argument("--minutes", type=float, default=15)
    parser.add_argument("--model", default=".*", help="the dashboard's model variable (a regex)")
    parser.add_argument("--scrape-s", type=float, default=15, help="Prometheus' scrape interval")
    parser.add_argument("--out", type=Path, default=Path("dashboard-preview.png"))
    args = parser.parse_args()
    end = time.time()
    print(render(args.prometheus, args.out, end - 60 * args.minutes, end, args.model, args.scrape_s))


if __name__ == "__main__":
    main()
