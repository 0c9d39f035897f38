"""Prometheus metrics (prefix eqserve_, label model), fed by each engine's observer."""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from eqserve.engine.completion import CompletionJob, CompletionResult
from eqserve.engine.core import Engine
from eqserve.engine.job import SolveJob, SolveResult
from eqserve.engine.tokens import TokenEngine
from eqserve.kernels.reference import Stop
from eqserve.service.fronts import shared_metrics

disable_created_metrics()  # the *_created series only double the scrape size

LATENCY_BUCKETS = (
    1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
)  # fmt: skip
"""Seconds, from 100 µs (one step of a small model) to minutes (a long deadline)."""

TICK_BUCKETS = (1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
"""Seconds per batch step: one G-step, solver update and stop decision over the batch."""

RESIDUAL_BUCKETS = tuple(10.0**e for e in range(-12, 3))
"""Final residuals from 1e-12 to 100, a decade a bucket."""


def iteration_buckets(cap: int) -> tuple[float, ...]:
    """1, 2, 5, 10, 20, 50, … up to and including the server's iteration cap."""
    out: list[float] = []
    decade = 1
    while decade <= cap:
        out += [b * decade for b in (1, 2, 5) if b * decade < cap]
        decade *= 10
    return (*out, float(cap))


def recurrence_buckets(cap: int) -> tuple[float, ...]:
    """1, 2, 4, 8, … up to and including the cap: a looped LM's per-token budgets are usually powers of two
    (Huginn's 4 … 64), which the 1-2-5 buckets would split, putting a 32-step token's p99 near 50."""
    out: list[float] = []
    b = 1
    while b < cap:
        out.append(b)
        b *= 2
    return (*out, float(cap))


class Metrics:
    """Every eqserve metric in one registry of its own (one per app, so tests can build many)."""

    def __init__(self, max_iters_cap: int) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.engines: list[Engine | TokenEngine] = []
        r.register(_EngineGauges(self.engines))
        self.requests = Counter(
            "eqserve_requests", "Finished solves by final status", ["model", "status"], registry=r
        )
        self.iterations = Counter(
            "eqserve_iterations", "Row-iterations computed (G-evaluations)", ["model"], registry=r
        )
        self.rejected = Counter(
            "eqserve_rejected", "Requests refused before solving, by reason", ["model", "reason"], registry=r
        )
        self.stream_clients = Gauge(
            "eqserve_stream_clients",
            "Open streaming connections",
            ["model"],
            registry=r,
            multiprocess_mode="livesum",
        )
        self.latency = Histogram(
            "eqserve_request_latency_seconds",
            "Arrival to result",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_wait = Histogram(
            "eqserve_queue_wait_seconds",
            "Arrival to admission into the batch",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.first_iterate = Histogram(
            "eqserve_time_to_first_iterate_seconds",
            "Arrival to the first iterate",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.tick = Histogram(
            "eqserve_tick_seconds",
            "One batch step (G-step, solver update, stop rule), averaged over a run",
            ["model"],
            buckets=TICK_BUCKETS,
            registry=r,
        )
        self.iters_per_request = Histogram(
            "eqserve_iterations_per_request",
            "Iterations a finished solve took",
            ["model"],
            buckets=iteration_buckets(max_iters_cap),
            registry=r,
        )
        self.token_iterations = Histogram(
            "eqserve_token_iterations",
            "Recurrence steps a looped LM's token took",
            ["model"],
            buckets=recurrence_buckets(max_iters_cap),
            registry=r,
        )
        self.token_exits = Counter(
            "eqserve_token_exits",
            "Tokens decided, by the request's exit criterion and what stopped the loop (rule or budget)",
            ["model", "criterion", "by"],
            registry=r,
        )
        self.final_residual = Histogram(
            "eqserve_final_residual",
            "Absolute residual when a solve stopped",
            ["model"],
            buckets=RESIDUAL_BUCKETS,
            registry=r,
        )

    def observe(self, engine: Engine | TokenEngine, looped: bool = False) -> None:
        """Attach to an engine (a looped LM's: `looped`): its events feed the counters and histograms,
        its queues the gauges."""
        kind = _TokenObserver if looped else _EngineObserver
        engine.observer = kind(self, engine.name)
        self.engines.append(engine)

    def forget(self, engine: Engine | TokenEngine) -> None:
        """Detach a stopped engine: its gauges leave the exposition (its counters stay, per model)."""
        self.engines.remove(engine)

    def render(self) -> bytes:
        """The text exposition format; with front processes sharing metrics (`--api-workers`), the
        counters and histograms of all of them, and this front's view of the engines' gauges."""
        if not shared_metrics():
            return generate_latest(self.registry)
        registry = CollectorRegistry()
        MultiProcessCollector(registry)
        registry.register(_EngineGauges(self.engines))
        return generate_latest(registry)


class _EngineObserver:
    """The engine's events as metric updates, with the label children bound once."""

    statuses: tuple[str, ...] = tuple(stop.label for stop in Stop if stop is not Stop.RUNNING)
    """A request's final statuses."""

    def __init__(self, m: Metrics, model: str) -> None:
        self.m, self.model = m, model
        # every status and queue_full at zero from the start: rate() and increase() need a sample before
        # the first increment, or a status's first solves never show (dashboards, alerts)
        for status in self.statuses:
            m.requests.labels(model, status)
        m.rejected.labels(model, "queue_full")
        m.stream_clients.labels(model)
        self.iterations = m.iterations.labels(model)
        self.latency = m.latency.labels(model)
        self.queue_wait = m.queue_wait.labels(model)
        self.first = m.first_iterate.labels(model)
        self.tick_s = m.tick.labels(model)
        self.iters = m.iters_per_request.labels(model)
        self.residual = m.final_residual.labels(model)

    def admitted(self, job: SolveJob, wait_s: float) -> None:
        """A request got a row."""
        if job.resume is None:
            self.queue_wait.observe(wait_s)

    def first_iterate(self, job: SolveJob, since_submit_s: float) -> None:
        """A request's first iterate is computed."""
        self.first.observe(since_submit_s)

    def ran(self, seconds: float, steps: int, rows: int, row_steps: int) -> None:
        """A run of `steps` batch steps, `row_steps` of them requests' iterations: one observation a
        step, so that the histogram counts steps whatever the runs' lengths."""
        per_step = seconds / steps
        for _ in range(steps):
            self.tick_s.observe(per_step)
        self.iterations.inc(row_steps)

    def finished(self, job: SolveJob, result: SolveResult) -> None:
        """A request stopped (or failed)."""
        self.m.requests.labels(self.model, result.status).inc()
        self.latency.observe(result.queue_ms / 1e3 + result.solve_ms / 1e3)
        self.iters.observe(result.iterations)
        if result.residual is not None and result.residual == result.residual:
            self.residual.observe(result.residual)

    def lost(self, job: SolveJob | CompletionJob, started: bool) -> None:
        """A request its engine process died with: an error if it had started (its client got a 5xx),
        else refused as `engine_restarting` (a 503 it may retry), so no request goes uncounted."""
        if started:
            self.m.requests.labels(self.model, "error").inc()
        else:
            self.m.rejected.labels(self.model, "engine_restarting").inc()


class _TokenObserver(_EngineObserver):
    """A looped LM's events: completions, and every token's inner steps and exit."""

    statuses = ("ok", "cancelled", "deadline", "error")

    def __init__(self, m: Metrics, model: str) -> None:
        super().__init__(m, model)
        self.token_iters = m.token_iterations.labels(model)

    def token(self, job: CompletionJob, iterations: int, by_rule: bool) -> None:
        """A token was decided after `iterations` inner steps."""
        self.token_iters.observe(iterations)
        self.m.token_exits.labels(self.model, job.rule.criterion, "rule" if by_rule else "budget").inc()

    def finished(self, job: CompletionJob, result: CompletionResult) -> None:  # type: ignore[override]
        """A completion ended (or failed): its status and latency."""
        self.m.requests.labels(self.model, result.status).inc()
        self.latency.observe(result.queue_ms / 1e3 + result.solve_ms / 1e3)
        self.iters.observe(result.total_iterations)


class _EngineGauges(Collector):
    """requests_running, requests_waiting and batch_rows of every engine, read at scrape time
    (one collector for all of them: a metric family may appear once in an exposition)."""

    def __init__(self, engines: list[Engine]) -> None:
        self.engines = engines

    def collect(self) -> Iterable[GaugeMetricFamily]:
        """One sample per engine for each gauge."""
        running = GaugeMetricFamily("eqserve_requests_running", "Requests in the batch", labels=["model"])
        waiting = GaugeMetricFamily(
            "eqserve_requests_waiting", "Requests waiting for a row", labels=["model"]
        )
        rows = GaugeMetricFamily("eqserve_batch_rows", "Rows the last run computed", labels=["model"])
        for e in self.engines:
            running.add_metric([e.name], e.running)
            waiting.add_metric([e.name], e.waiting)
            rows.add_metric([e.name], e.last_run_rows)
        return [running, waiting, rows]
