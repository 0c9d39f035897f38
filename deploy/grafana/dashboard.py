"""The eqserve Grafana dashboard, generated from one list of panels so that its queries, the tests that
run them against a real Prometheus and the preview picture all use the same expressions.

    python -m deploy.grafana.dashboard      rewrites deploy/grafana/dashboards/eqserve.json
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

OUT = Path(__file__).parent / "dashboards" / "eqserve.json"
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
SEL = 'model=~"$model"'
"""Every eqserve series is filtered by the dashboard's `model` variable."""

QUANTILES = (0.5, 0.9, 0.99)
CONVERGED = 'status="converged"'
LOOPED_MODELS = "eqserve_token_iterations_count"
"""A series every looped LM has from its start (and no other model): `unless on (model)` it drops them."""


@dataclass(frozen=True)
class Panel:
    """One panel: what it shows (PromQL with Grafana's variables, legend) and how."""

    title: str
    description: str
    targets: tuple[tuple[str, str], ...]
    unit: str = "short"
    kind: str = "timeseries"  # timeseries | heatmap
    width: int = 8


def _rate(metric: str, extra: str = "") -> str:
    sel = f"{SEL},{extra}" if extra else SEL
    return f"rate({metric}{{{sel}}}[$__rate_interval])"


def _quantiles(histogram: str, by: str = "") -> tuple[tuple[str, str], ...]:
    """p50/p90/p99 over all selected models, and the mean."""
    group = f"sum by (le{by}) "
    return (
        *(
            (f"histogram_quantile({q}, {group}({_rate(histogram + '_bucket')}))", f"p{round(q * 100)}")
            for q in QUANTILES
        ),
        (f"sum({_rate(histogram + '_sum')}) / sum({_rate(histogram + '_count')})", "mean"),
    )


def _heatmap(histogram: str) -> tuple[tuple[str, str], ...]:
    return ((f"sum by (le) (increase({histogram}_bucket{{{SEL}}}[$__rate_interval]))", "{{le}}"),)


SERVING = (
    Panel(
        "Requests/s by status",
        "Finished requests per second by final status: solves (converged, max_iters, deadline, diverged, "
        "cancelled, error) and looped LMs' completions (ok, cancelled, deadline, error).",
        ((f"sum by (status) ({_rate('eqserve_requests_total')})", "{{status}}"),),
        "reqps",
    ),
    Panel(
        "Rejected/s by reason",
        "Requests refused before solving: queue_full (429) or the error type of a 4xx.",
        ((f"sum by (reason) ({_rate('eqserve_rejected_total')})", "{{reason}}"),),
        "reqps",
    ),
    Panel(
        "Request latency",
        "Arrival to result: quantiles over all selected models, and the mean.",
        _quantiles("eqserve_request_latency_seconds"),
        "s",
    ),
    Panel(
        "Time to first iterate",
        "Arrival to the first computed iterate (what a streaming client waits before its first event).",
        _quantiles("eqserve_time_to_first_iterate_seconds"),
        "s",
    ),
    Panel(
        "Running vs waiting",
        "Requests holding a batch row, and requests waiting for one (429 once --max-queue wait).",
        (
            (f"sum by (model) (eqserve_requests_running{{{SEL}}})", "running {{model}}"),
            (f"sum by (model) (eqserve_requests_waiting{{{SEL}}})", "waiting {{model}}"),
        ),
    ),
    Panel(
        "Queue wait",
        "Arrival to admission into the batch; high when --max-batch-rows is too small for the load.",
        _quantiles("eqserve_queue_wait_seconds"),
        "s",
    ),
    Panel(
        "Batch rows",
        "Rows the last engine tick computed (0 when idle); at --max-batch-rows the batch is full.",
        ((f"sum by (model) (eqserve_batch_rows{{{SEL}}})", "{{model}}"),),
    ),
    Panel(
        "Stream clients",
        "Open WebSocket and server-sent-event streams.",
        ((f"sum by (model) (eqserve_stream_clients{{{SEL}}})", "{{model}}"),),
    ),
    Panel(
        "Scrape health",
        "1 while Prometheus reaches the server (up), and how long a scrape takes.",
        (
            ('up{job=~"$job"}', "up {{instance}}"),
            ('scrape_duration_seconds{job=~"$job"}', "scrape s {{instance}}"),
        ),
    ),
)

ITERATIVE = (
    Panel(
        "Iterations/s",
        "Row-iterations (G-evaluations) computed per second.",
        ((f"sum by (model) ({_rate('eqserve_iterations_total')})", "{{model}}"),),
        "ops",
    ),
    Panel(
        "Convergence share",
        "Share of finished solves that converged (reached their tolerance) among all finished solves; "
        "looped LMs' completions, which have no tolerance, are left out.",
        (
            (
                f"sum({_rate('eqserve_requests_total', CONVERGED)}) / "
                f"sum({_rate('eqserve_requests_total')} unless on (model) {LOOPED_MODELS})",
                "converged",
            ),
        ),
        "percentunit",
    ),
    Panel(
        "Iterations per request",
        "How many iterations solves took (heatmap of the histogram's buckets).",
        _heatmap("eqserve_iterations_per_request"),
        kind="heatmap",
    ),
    Panel(
        "Iterations per request, quantiles",
        "p50/p90/p99 of the iterations a solve took, and the mean.",
        _quantiles("eqserve_iterations_per_request"),
    ),
    Panel(
        "Final residual",
        "Absolute residual at the stop, a decade a bucket (1e-12 … 100).",
        _heatmap("eqserve_final_residual"),
        kind="heatmap",
    ),
    Panel(
        "Tick time",
        "One engine tick (G-step, solver update, stop rule) over the whole batch.",
        _quantiles("eqserve_tick_seconds"),
        "s",
    ),
    Panel(
        "Engine busy fraction",
        "Seconds spent ticking per second: near 1 the engine never idles and the queue grows.",
        ((f"sum by (model) ({_rate('eqserve_tick_seconds_sum')})", "{{model}}"),),
        "percentunit",
    ),
    Panel(
        "Mean rows per tick",
        "Row-iterations per tick: how full the batches run.",
        (
            (
                f"sum by (model) ({_rate('eqserve_iterations_total')}) / "
                f"sum by (model) ({_rate('eqserve_tick_seconds_count')})",
                "{{model}}",
            ),
        ),
    ),
    Panel(
        "Seconds per row-iteration",
        "Tick time divided over the rows it computed: the cost of one G-evaluation in a batch.",
        (
            (
                f"sum by (model) ({_rate('eqserve_tick_seconds_sum')}) / "
                f"sum by (model) ({_rate('eqserve_iterations_total')})",
                "{{model}}",
            ),
        ),
        "s",
    ),
)

LOOPED = (
    Panel(
        "Iterations per token",
        "Recurrence steps a looped LM's tokens took (each request's exit rule or per-token budget): "
        "p50/p90/p99 and the mean.",
        _quantiles("eqserve_token_iterations"),
    ),
    Panel(
        "Tokens/s by exit criterion",
        "Tokens decided per second, by the request's exit criterion and what stopped the token's loop: "
        "the rule (it converged) or the budget (max_iters).",
        (
            (
                f"sum by (criterion, by) ({_rate('eqserve_token_exits_total')})",
                "{{criterion}} by {{by}}",
            ),
        ),
        "ops",
    ),
)

ROWS = (("Serving", SERVING), ("Iterative solving", ITERATIVE), ("Looped LMs", LOOPED))
PANELS = SERVING + ITERATIVE + LOOPED

VARIABLES = (
    {
        "type": "datasource",
        "name": "datasource",
        "label": "Data source",
        "query": "prometheus",
    },
    {
        "type": "query",
        "name": "model",
        "label": "Model",
        "datasource": DATASOURCE,
        "query": {"query": "label_values(eqserve_requests_waiting, model)", "refId": "model"},
        "refresh": 2,
        "multi": True,
        "includeAll": True,
        "allValue": ".*",
        "sort": 1,
    },
    {
        "type": "query",
        "name": "job",
        "label": "Job",
        "datasource": DATASOURCE,
        "query": {"query": "label_values(eqserve_requests_waiting, job)", "refId": "job"},
        "refresh": 2,
        "multi": True,
        "includeAll": True,
        "allValue": ".*",
        "sort": 1,
    },
)
"""Grafana's `label_values(METRIC, LABEL)`: the label's values on the metric's series."""


def _panel(p: Panel, pid: int, x: int, y: int) -> dict[str, Any]:
    out: dict[str, Any] = {
        "type": p.kind,
        "id": pid,
        "title": p.title,
        "description": p.description,
        "datasource": DATASOURCE,
        "gridPos": {"h": 8, "w": p.width, "x": x, "y": y},
        "targets": [
            {"refId": chr(ord("A") + i), "datasource": DATASOURCE, "expr": expr, "legendFormat": legend}
            | ({"format": "heatmap"} if p.kind == "heatmap" else {})
            for i, (expr, legend) in enumerate(p.targets)
        ],
        "fieldConfig": {"defaults": {"unit": p.unit}, "overrides": []},
    }
    if p.kind == "heatmap":
        out["options"] = {"calculate": False, "yAxis": {"unit": p.unit}, "cellGap": 1}
    else:
        out["options"] = {"legend": {"displayMode": "list", "placement": "bottom", "showLegend": True}}
    return out


def dashboard() -> dict[str, Any]:
    """The dashboard JSON (Grafana's dashboard model, schemaVersion 39)."""
    panels: list[dict[str, Any]] = []
    y, pid = 0, 1
    for title, group in ROWS:
        grid = {"h": 1, "w": 24, "x": 0, "y": y}
        panels.append({"type": "row", "id": pid, "title": title, "collapsed": False, "gridPos": grid})
        pid, y, x = pid + 1, y + 1, 0
        for p in group:
            if x + p.width > 24:
                x, y = 0, y + 8
            panels.append(_panel(p, pid, x, y))
            pid, x = pid + 1, x + p.width
        y += 8
    return {
        "uid": "eqserve",
        "title": "eqserve",
        "description": "Serving and iterative-solving metrics of eqserve (docs/deploy.md)",
        "tags": ["eqserve"],
        "editable": True,
        "graphTooltip": 1,
        "refresh": "10s",
        "schemaVersion": 39,
        "time": {"from": "now-1h", "to": "now"},
        "templating": {"list": list(VARIABLES)},
        "annotations": {"list": []},
        "panels": panels,
    }


def render() -> str:
    """The dashboard as the file holds it."""
    return json.dumps(dashboard(), indent=2, ensure_ascii=False) + "\n"


def substitute(expr: str, model: str, job: str, rate_interval: str) -> str:
    """The expression Grafana sends for one `model` and `job` value and a `$__rate_interval`."""
    return (
        expr.replace("$__rate_interval", rate_interval).replace("$model", model).replace("$job", job)
    )


if __name__ == "__main__":
    OUT.write_text(render())
    print(f"wrote {OUT}")
