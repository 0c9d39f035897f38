"""Serving benchmark: continuous vs static vs sequential batching over real HTTP, and continuous batching
with the engine in its own process (the default) vs in the HTTP process (`in-process`) vs with
`--api-workers N` front processes (`api-workers`, not run unless asked for).

Starts one `eqserve serve` process per mode on a free local port, sends each the same seeded list
of N requests (tolerances log-uniform in [1e-6, 1e-2], budgets large enough to converge) from C
concurrent closed-loop clients, in interleaved rounds, and prints a table then one JSON line
(ratios of requests/s). The clients are lean keep-alive HTTP/1.1 connections (`http_load.py`); they
share the machine's CPUs with the server, and the table reports what each side used.

    .venv/bin/python bench/serving.py            # full run
    .venv/bin/python bench/serving.py --quick    # under 3 minutes on a 2-core CPU
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import math
import os
import platform
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from http_load import Connection, HttpError

from eqserve.models.shipped import WEIGHTS_DIR

ROOT = Path(__file__).resolve().parent.parent
MODES = ("sequential", "static", "continuous", "in-process", "api-workers")
TOL_RANGE = (1e-6, 1e-2)
READY_TIMEOUT_S = 120.0
BUSY_OTHER_CPU = 0.15
"""Other processes' CPU (cores) during a measured phase above which the table warns."""


@dataclass
class Outcome:
    """One request as the client saw it."""

    latency_s: float
    status_code: int
    status: str | None = None
    iterations: int | None = None
    queue_ms: float | None = None
    solve_ms: float | None = None


@dataclass
class Window:
    """Counters over one measured phase: wall time, CPU seconds (server process, this client, whole
    machine) and the server's engine totals from /metrics (tick seconds, ticks, row-iterations)."""

    wall_s: float = 0.0
    server_cpu_s: float = 0.0
    client_cpu_s: float = 0.0
    system_cpu_s: float = 0.0
    tick_s: float = 0.0
    ticks: float = 0.0
    row_iters: float = 0.0

    def since(self, start: Window) -> Window:
        """The counters' increase from `start` to self."""
        return Window(*(getattr(self, f.name) - getattr(start, f.name) for f in dataclasses.fields(self)))

    def __add__(self, other: Window) -> Window:
        return Window(*(getattr(self, f.name) + getattr(other, f.name) for f in dataclasses.fields(self)))


ENGINE_METRICS = ("eqserve_tick_seconds_sum", "eqserve_tick_seconds_count", "eqserve_iterations_total")


def engine_totals(metrics_text: str, model: str) -> tuple[float, float, float]:
    """(tick seconds, ticks, row-iterations) of `model` from Prometheus text; NaN where absent."""
    found = dict.fromkeys(ENGINE_METRICS, math.nan)
    label = f'model="{model}"'
    for line in metrics_text.splitlines():
        name, _, rest = line.partition("{")
        if name in found and label in rest:
            found[name] = float(line.rsplit(" ", 1)[1])
    return found[ENGINE_METRICS[0]], found[ENGINE_METRICS[1]], found[ENGINE_METRICS[2]]


async def snapshot(client: httpx.AsyncClient, pid: int, model: str) -> Window:
    """Absolute counters now (engine totals NaN if the server has no /metrics)."""
    try:
        r = await client.get("/metrics")
        engine = engine_totals(r.text, model) if r.status_code == 200 else (math.nan,) * 3
    except httpx.HTTPError:
        engine = (math.nan,) * 3
    return Window(time.perf_counter(), proc_cpu_s(pid), time.process_time(), system_cpu_s(), *engine)


@dataclass
class ModeResult:
    """Everything measured for one serving mode."""

    mode: str
    server_flags: list[str]
    outcomes: list[Outcome]
    window: Window
    statuses: dict[str, int] = field(default_factory=dict)

    @property
    def wall_s(self) -> float:
        """Wall seconds of the measured phase."""
        return self.window.wall_s

    def cpu_share(self, who: str) -> float:
        """CPU seconds per wall second of `server`, `client` or `other` (every other process)."""
        w = self.window
        if who == "other":
            return max(0.0, w.system_cpu_s - w.server_cpu_s - w.client_cpu_s) / w.wall_s
        return getattr(w, f"{who}_cpu_s") / w.wall_s

    @property
    def ok(self) -> list[Outcome]:
        """Responses with HTTP 200."""
        return [o for o in self.outcomes if o.status_code == 200]

    @property
    def errors(self) -> int:
        """Responses other than HTTP 200 (refused, failed, or transport errors as code 0)."""
        return len(self.outcomes) - len(self.ok)

    @property
    def rps(self) -> float:
        """Completed requests per second of wall time."""
        return len(self.outcomes) / self.wall_s

    def pct_ms(self, q: float) -> float:
        """Client-side latency percentile q (0..100) in ms."""
        lat = sorted(o.latency_s for o in self.outcomes)
        return 1e3 * lat[min(len(lat) - 1, max(0, math.ceil(q / 100 * len(lat)) - 1))]

    def cpu_ms_per_request(self, who: str) -> float:
        """CPU milliseconds per request of `server` or `client`."""
        return 1e3 * getattr(self.window, f"{who}_cpu_s") / len(self.outcomes)

    @property
    def rows_per_tick(self) -> float:
        """Mean batch rows per engine tick (row-iterations / ticks, from /metrics)."""
        return self.window.row_iters / self.window.ticks if self.window.ticks else math.nan

    @property
    def tick_us(self) -> float:
        """Mean engine tick in µs (from /metrics)."""
        return 1e6 * self.window.tick_s / self.window.ticks if self.window.ticks else math.nan

    @property
    def engine_busy(self) -> float:
        """Fraction of wall time the engine spent inside ticks (from /metrics)."""
        return self.window.tick_s / self.wall_s

    def mean(self, attr: str) -> float:
        """Mean of an attribute over the 200 responses (NaN when none)."""
        vals = [getattr(o, attr) for o in self.ok if getattr(o, attr) is not None]
        return statistics.fmean(vals) if vals else math.nan


# -- inputs -----------------------------------------------------------------------------------


def _inputs(model: str, n: int, rng: random.Random) -> list[dict[str, Any]]:
    """n model inputs: held-out x (shuffled, cycled) or uniform [0.05, 1]^4; reciprocal: (0, 2)."""
    if model == "deq-mlp":
        held = WEIGHTS_DIR / "deq-mlp-heldout.safetensors"
        if held.exists():
            from safetensors.numpy import load_file

            xs = load_file(str(held))["x"].tolist()
            rng.shuffle(xs)
            return [{"x": [float(v) for v in xs[i % len(xs)]]} for i in range(n)]
        return [{"x": [rng.uniform(0.05, 1.0) for _ in range(4)]} for _ in range(n)]
    if model == "reciprocal":
        return [{"x": [rng.uniform(0.05, 1.95) for _ in range(4)]} for _ in range(n)]
    raise SystemExit(f"no input generator for model {model!r}; choose deq-mlp or reciprocal")


def make_requests(model: str, n: int, max_iters: int, seed: int) -> list[dict[str, Any]]:
    """The seeded request list shared by every mode."""
    rng = random.Random(seed)
    lo, hi = (math.log(t) for t in TOL_RANGE)
    inputs = _inputs(model, n, rng)
    return [
        {
            "model": model,
            "input": inp,
            "budget": {"max_iters": max_iters, "tol": math.exp(rng.uniform(lo, hi)), "stop_mode": "abs"},
        }
        for inp in inputs
    ]


# -- the server -------------------------------------------------------------------------------


def free_port() -> int:
    """A port the OS reports free on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def eqserve_bin() -> str:
    """The eqserve console script beside this interpreter, else on PATH."""
    here = Path(sys.executable).parent / "eqserve"
    return str(here) if here.exists() else (shutil.which("eqserve") or "eqserve")


def system_cpu_s() -> float:
    """Busy CPU seconds of the whole machine, all cores (Linux /proc/stat), NaN elsewhere."""
    try:
        vals = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
        return (sum(vals[:8]) - vals[3] - vals[4]) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return math.nan


def proc_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a live process and its live descendants (the server's engine
    processes) (Linux /proc), NaN elsewhere."""
    try:
        parents: dict[int, list[int]] = {}
        cpu: dict[int, float] = {}
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            child = int(entry.name)
            parents.setdefault(int(fields[1]), []).append(child)
            cpu[child] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        total, todo = 0.0, [pid]
        while todo:
            p = todo.pop()
            total += cpu.get(p, 0.0)
            todo += parents.get(p, [])
        return total if pid in cpu else math.nan
    except (OSError, IndexError, ValueError):
        return math.nan


class Server:
    """One `eqserve serve` subprocess on a free port, stopped on exit."""

    def __init__(self, flags: list[str]) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cmd = [
            eqserve_bin(),
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--log-level",
            "warning",
            *flags,
        ]
        self.log = tempfile.TemporaryFile("w+")  # noqa: SIM115 (closed in stop; a full pipe would block)
        self.proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=self.log, text=True)

    def log_tail(self, chars: int = 4000) -> str:
        """The end of the server's stderr."""
        self.log.seek(0)
        return self.log.read()[-chars:]

    def wait_ready(self) -> None:
        """Poll /readyz until 200; raise with the server's stderr if it exits or times out."""
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"eqserve exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=1.0).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"eqserve not ready after {READY_TIMEOUT_S:.0f} s")

    def stop(self) -> None:
        """SIGINT (uvicorn's graceful stop), then kill after a grace period."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


# -- the clients ------------------------------------------------------------------------------


def encoded(bodies: list[dict[str, Any]]) -> list[bytes]:
    """Request bodies as JSON bytes, encoded before the clock starts."""
    return [json.dumps(b).encode() for b in bodies]


def asyncio_run(coro: Any) -> Any:
    """asyncio.run on uvloop (as the server runs) when it is installed: less client CPU per request."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


async def _one(conn: Connection, body: bytes) -> Outcome:
    """POST one solve; any transport error counts as status code 0."""
    start = time.perf_counter()
    try:
        r = await conn.post("/v1/solve", body)
    except (HttpError, OSError):
        return Outcome(time.perf_counter() - start, 0)
    elapsed = time.perf_counter() - start
    if r.status != 200:
        return Outcome(elapsed, r.status)
    data = json.loads(r.body)
    timing = data.get("timing", {})
    return Outcome(
        elapsed,
        200,
        data.get("status"),
        data.get("iterations"),
        timing.get("queue_ms"),
        timing.get("solve_ms"),
    )


async def _closed_loop(clients: list[Connection], bodies: list[bytes]) -> list[Outcome]:
    """Each client sends its next request as soon as its previous one is answered."""
    out: list[Outcome | None] = [None] * len(bodies)
    next_index = iter(range(len(bodies)))

    async def worker(client: Connection) -> None:
        for i in next_index:
            out[i] = await _one(client, bodies[i])

    await asyncio.gather(*(worker(c) for c in clients))
    return [o for o in out if o is not None]


@dataclass
class Target:
    """One mode's running server, its C clients and a metrics reader, with what has been measured."""

    mode: str
    server: Server
    clients: list[Connection]
    reader: httpx.AsyncClient
    outcomes: list[Outcome] = field(default_factory=list)
    window: Window = field(default_factory=Window)


async def measure(
    targets: list[Target], warmup: list[bytes], bodies: list[bytes], rounds: int, model: str
) -> None:
    """Warm every server up, then give each mode the same slice of `bodies` per round, in rotating order.

    Interleaving the modes spreads any other load on the machine evenly over them.
    """
    for t in targets:
        await _closed_loop(t.clients, warmup)
    size = math.ceil(len(bodies) / rounds)
    for r in range(rounds):
        chunk = bodies[r * size : (r + 1) * size]
        for t in targets[r % len(targets) :] + targets[: r % len(targets)]:
            start = await snapshot(t.reader, t.server.proc.pid, model)
            t.outcomes += await _closed_loop(t.clients, chunk)
            end = await snapshot(t.reader, t.server.proc.pid, model)
            t.window = t.window + end.since(start)


def _clients(port: int, concurrency: int) -> list[Connection]:
    """One keep-alive connection per closed-loop client (see bench/http_load.py for why not httpx)."""
    return [Connection("127.0.0.1", port) for _ in range(concurrency)]


def run_modes(
    flags: dict[str, list[str]],
    bodies: list[dict[str, Any]],
    warmup: list[dict[str, Any]],
    concurrency: int,
    rounds: int,
) -> list[ModeResult]:
    """Start one server per mode, measure them interleaved, stop them all."""
    with contextlib.ExitStack() as stack:
        t0 = time.perf_counter()
        servers = {mode: stack.enter_context(Server(f)) for mode, f in flags.items()}
        for server in servers.values():
            server.wait_ready()
        startup = time.perf_counter() - t0

        async def go() -> list[Target]:
            targets = [
                Target(m, s, _clients(s.port, concurrency), httpx.AsyncClient(base_url=s.url))
                for m, s in servers.items()
            ]
            try:
                await measure(targets, encoded(warmup), encoded(bodies), rounds, bodies[0]["model"])
            finally:
                await asyncio.gather(*(c.close() for t in targets for c in t.clients))
                await asyncio.gather(*(t.reader.aclose() for t in targets))
            return targets

        targets = asyncio_run(go())
    results = []
    for t in targets:
        statuses: dict[str, int] = {}
        for o in t.outcomes:
            key = str(o.status) if o.status_code == 200 else f"http {o.status_code}"
            statuses[key] = statuses.get(key, 0) + 1
        results.append(ModeResult(t.mode, flags[t.mode], t.outcomes, t.window, statuses))
    print(f"servers ready {startup:.1f} s after start", flush=True)
    return results


# -- report -----------------------------------------------------------------------------------


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (or platform.processor())."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def print_table(results: list[ModeResult]) -> None:
    """The human-readable tables: the result, then where the time went."""
    head = f"{'mode':<11} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'mean it':>8} {'errors':>6}"
    print(head)
    print("-" * len(head))
    for r in results:
        print(
            f"{r.mode:<11} {r.rps:>8.1f} {r.pct_ms(50):>8.1f} {r.pct_ms(99):>8.1f} "
            f"{r.mean('iterations'):>8.1f} {r.errors:>6}"
        )
    print()
    head = (
        f"{'mode':<11} {'queue ms':>9} {'solve ms':>9} {'rows/tick':>9} {'tick us':>8} {'eng busy':>8} "
        f"{'srv cpu':>8} {'srv ms/rq':>9} {'cli ms/rq':>9} {'other':>6}"
    )
    print(head)
    print("-" * len(head))
    for r in results:
        print(
            f"{r.mode:<11} {r.mean('queue_ms'):>9.1f} {r.mean('solve_ms'):>9.1f} {r.rows_per_tick:>9.1f} "
            f"{r.tick_us:>8.0f} {r.engine_busy:>8.0%} {r.cpu_share('server'):>8.0%} "
            f"{r.cpu_ms_per_request('server'):>9.2f} {r.cpu_ms_per_request('client'):>9.2f} "
            f"{r.cpu_share('other'):>6.0%}"
        )
    print("queue/solve ms: server-side means per request; rows/tick, tick us, eng busy: the engine's own")
    print("/metrics (eng busy = time in ticks / wall); srv cpu: server processes (front, engines) / wall;")
    print("srv/cli ms/rq: CPU ms per request of the server and of this client; other: every other process")
    if busy := [r.mode for r in results if r.cpu_share("other") > BUSY_OTHER_CPU]:
        print(f"WARNING: other processes used CPU during {', '.join(busy)}: the numbers are contaminated")
    for r in results:
        print(f"  {r.mode}: statuses {r.statuses}; eqserve serve {' '.join(r.server_flags)}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line flags."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="deq-mlp")
    p.add_argument("--n", type=int, default=None, help="requests per mode (default 4000, quick 1200)")
    p.add_argument("--concurrency", type=int, default=None, help="concurrent clients (default 64)")
    p.add_argument("--quick", action="store_true", help="a smaller run that finishes in under 3 minutes")
    p.add_argument("--max-iters", type=int, default=2000, help="budget.max_iters of every request")
    p.add_argument("--max-batch-rows", type=int, default=64, help="rows per batch for static and continuous")
    p.add_argument("--warmup", type=int, default=None, help="unmeasured requests per server (default 2×C)")
    p.add_argument("--rounds", type=int, default=None, help="interleaved rounds, N/rounds requests each (3)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--modes", default=",".join(MODES[:4]), help="comma-separated subset of " + ",".join(MODES)
    )
    p.add_argument("--api-workers", type=int, default=2, help="HTTP front processes of the api-workers mode")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run every mode on the same requests; print the table, then one JSON line."""
    args = parse_args(argv)
    n = args.n or (1200 if args.quick else 4000)
    rounds = args.rounds or 3
    conc = args.concurrency or 64
    warm_n = args.warmup if args.warmup is not None else 2 * conc
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if unknown := [m for m in modes if m not in MODES]:
        raise SystemExit(f"unknown mode(s) {unknown}; choose from {MODES}")
    if args.model == "deq-mlp" and not (WEIGHTS_DIR / "deq-mlp.safetensors").exists():
        missing = WEIGHTS_DIR / "deq-mlp.safetensors"
        raise SystemExit(f"{missing} is missing: train it or pass --model reciprocal")

    bodies = make_requests(args.model, n, args.max_iters, args.seed)
    warmup = make_requests(args.model, warm_n, args.max_iters, args.seed + 1)
    queue = str(max(n, warm_n) + 1)
    common = ["--models", args.model, "--max-queue", queue, "--max-iters-cap", str(max(args.max_iters, 1))]
    flags = {
        "sequential": [*common, "--max-batch-rows", "1"],
        "static": [*common, "--max-batch-rows", str(args.max_batch_rows), "--batching", "static"],
        "continuous": [*common, "--max-batch-rows", str(args.max_batch_rows), "--batching", "continuous"],
    }
    flags["in-process"] = [*flags["continuous"], "--engine-process", "off"]
    flags["api-workers"] = [*flags["continuous"], "--api-workers", str(args.api_workers)]
    print(
        f"eqserve serving benchmark: model {args.model}, N={n}, C={conc}, {rounds} rounds, "
        f"warm-up {warm_n}, tol log-uniform {TOL_RANGE[0]:g}..{TOL_RANGE[1]:g}, "
        f"max_iters {args.max_iters}, {os.cpu_count()} CPUs ({cpu_model()})",
        flush=True,
    )
    t0 = time.perf_counter()
    results = run_modes({m: flags[m] for m in modes}, bodies, warmup, conc, rounds)
    total = time.perf_counter() - t0
    print()
    print_table(results)
    print(f"total {total:.1f} s including server starts")

    by = {r.mode: r for r in results}
    summary: dict[str, Any] = {
        "bench": "serving",
        "model": args.model,
        "n": n,
        "concurrency": conc,
        "max_batch_rows": args.max_batch_rows,
        "max_iters": args.max_iters,
        "rounds": rounds,
        "tol_range": list(TOL_RANGE),
        "quick": args.quick,
    }
    for r in results:
        summary[r.mode] = {
            "rps": round(r.rps, 2),
            "p50_ms": round(r.pct_ms(50), 2),
            "p99_ms": round(r.pct_ms(99), 2),
            "mean_iterations": round(r.mean("iterations"), 2),
            "errors": r.errors,
            "server_cpu_per_wall": round(r.cpu_share("server"), 3),
            "client_cpu_per_wall": round(r.cpu_share("client"), 3),
            "other_cpu_per_wall": round(r.cpu_share("other"), 3),
            "server_cpu_ms_per_request": round(r.cpu_ms_per_request("server"), 3),
            "client_cpu_ms_per_request": round(r.cpu_ms_per_request("client"), 3),
            "rows_per_tick": round(r.rows_per_tick, 2),
            "tick_us": round(r.tick_us, 1),
            "engine_busy": round(r.engine_busy, 3),
        }
    if "continuous" in by:
        for base in ("static", "sequential", "in-process"):
            if base in by:
                summary[f"ratio_continuous_vs_{base}"] = round(by["continuous"].rps / by[base].rps, 3)
        if "api-workers" in by:
            ratio = by["api-workers"].rps / by["continuous"].rps
            summary["ratio_api_workers_vs_continuous"] = round(ratio, 3)
    summary["machine"] = {
        "cpu_count": os.cpu_count(),
        "cpu_model": cpu_model(),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
    summary["total_s"] = round(total, 1)
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
