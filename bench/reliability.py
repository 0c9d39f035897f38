"""Reliability benchmark: how one live `eqserve serve` behaves under overload, abuse and shutdown.

Starts one server on a free loopback port (model `reciprocal`, every solve a fixed `--iters`
iterations so that its cost is known) and measures, in order:

1. capacity: solves/s answered to a closed loop that keeps the batch full;
2. overload: an open loop offering 2× that rate for `--overload-s`: accepted, refused with 429, lost
   (no answer), 5xx, and the p99 latency of the accepted;
3. disconnect storms: 100 clients over HTTP, SSE and WebSocket start long solves and vanish; the time
   until `eqserve_requests_running` and `_waiting` are 0, and fds and RSS before and after;
4. 200 concurrent WebSocket streams, each to its result;
5. a mixed soak (HTTP, SSE, WS) for `--soak-s`: errors, RSS growth after warm-up (< 5 %), fds;
6. slowloris: normal requests' p99 while 200 connections trickle header bytes, against it before;
7. SIGTERM drain: solves in flight when the signal comes are all answered, the exit status is 0.

Every loop is bounded in count and time. Prints a table, then one JSON line.

    .venv/bin/python bench/reliability.py                 # about 13 minutes (a 10-minute soak)
    .venv/bin/python bench/reliability.py --soak-s 120    # about 5 minutes
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import random
import signal
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from http_load import Connection, HttpError
from serving import Server, asyncio_run, cpu_model
from ws_load import TEXT, WsError, _connect, _frame, stream_solve

MODEL = "reciprocal"
SLOW_X = 1e-6
"""The input whose solve converges so slowly (y → 1/x) that a budget of tol 0 always runs out."""
ANSWER_BOUND_S = 120.0
"""Longest a client waits for any one answer; one that has none by then counts as lost."""

SETTLE_BOUND_S = 30.0
"""Longest a phase waits for the server to settle (rows freed, connections accepted)."""

POLL_S = 0.02
"""How often /metrics is read while waiting for rows to be freed."""

OK = ("converged", "max_iters")
"""A solve's answers that are not errors."""

STORM_CLIENTS = 100
STREAMS = 200
TRICKLERS = 200
RSS_GROWTH_BOUND = 0.05
DRAIN_SOLVE_S = 3.0
"""Deadline of the solves in flight at SIGTERM: they end by it, well within the 20 s drain."""


@dataclass
class Answer:
    """One request as its client saw it: HTTP status (0: no answer) and latency."""

    status: int
    latency_s: float


@dataclass
class Report:
    """Every phase's figures, as the JSON line carries them."""

    figures: dict[str, Any] = field(default_factory=dict)

    def add(self, phase: str, **values: Any) -> None:
        """Record a phase's figures and print them as they come."""
        self.figures[phase] = values
        print(f"  {phase}: {json.dumps(values)}", flush=True)


# -- the server process -------------------------------------------------------------------------


def rss_mb(pid: int) -> float:
    """Resident memory of a live process, MB (Linux /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def fds(pid: int) -> int:
    """Open file descriptors of a live process (Linux /proc)."""
    return len(os.listdir(f"/proc/{pid}/fd"))


def gauges(url: str) -> tuple[float, float]:
    """(requests running, requests waiting) of MODEL from /metrics."""
    text = httpx.get(f"{url}/metrics", timeout=10).text
    found = {}
    for line in text.splitlines():
        name, _, rest = line.partition("{")
        if name in ("eqserve_requests_running", "eqserve_requests_waiting") and f'model="{MODEL}"' in rest:
            found[name] = float(line.rsplit(" ", 1)[1])
    return found["eqserve_requests_running"], found["eqserve_requests_waiting"]


def wait_rows(url: str, until: Callable[[float, float], bool], bound_s: float = SETTLE_BOUND_S) -> float:
    """Seconds until `until(running, waiting)` holds (raises past `bound_s`)."""
    start = time.monotonic()
    while not until(*gauges(url)):
        if time.monotonic() - start > bound_s:
            raise RuntimeError(f"rows did not settle in {bound_s:.0f} s: running, waiting = {gauges(url)}")
        time.sleep(POLL_S)
    return time.monotonic() - start


def solve_body(iters: int, **extra: Any) -> dict[str, Any]:
    """A solve of exactly `iters` iterations (tol 0 never stops it sooner)."""
    return {"model": MODEL, "input": {"x": [SLOW_X]}, "budget": {"tol": 0.0, "max_iters": iters}, **extra}


def http_head(port: int, path: str, body: bytes) -> bytes:
    """The bytes of a JSON POST of `body`."""
    return (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body


def pct(values: list[float], q: float) -> float:
    """The q-quantile of `values` (NaN if empty)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


# -- 1, 2: capacity and overload ----------------------------------------------------------------


async def post(conn: Connection, body: bytes) -> Answer:
    """POST one solve; no answer within ANSWER_BOUND_S, or a broken connection, is status 0."""
    start = time.perf_counter()
    try:
        reply = await asyncio.wait_for(conn.post("/v1/solve", body), ANSWER_BOUND_S)
    except (HttpError, OSError, TimeoutError):
        await conn.close()
        return Answer(0, time.perf_counter() - start)
    return Answer(reply.status, time.perf_counter() - start)


async def closed_loop(port: int, body: bytes, clients: int, seconds: float) -> list[Answer]:
    """`clients` connections each posting `body` back to back for `seconds`."""
    answers: list[Answer] = []
    end = time.monotonic() + seconds

    async def client() -> None:
        conn = Connection("127.0.0.1", port)
        while time.monotonic() < end:
            answers.append(await post(conn, body))
        await conn.close()

    await asyncio.gather(*(client() for _ in range(clients)))
    return answers


async def open_loop(
    port: int, body: bytes, rate: float, seconds: float, workers: int
) -> tuple[list[Answer], float]:
    """Requests sent at `rate`/s for `seconds` whatever the answers (each arrival on a free one of
    `workers` connections): the answers, and the worst lateness of an arrival (s) should the workers
    all have been busy."""
    arrivals = int(rate * seconds)
    answers: list[Answer] = []
    late = 0.0
    nxt = 0
    t0 = time.monotonic()

    async def worker() -> None:
        nonlocal nxt, late
        conn = Connection("127.0.0.1", port)
        while nxt < arrivals:
            i, nxt = nxt, nxt + 1
            delay = t0 + i / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            late = max(late, -delay)
            answers.append(await post(conn, body))
        await conn.close()

    await asyncio.gather(*(worker() for _ in range(workers)))
    return answers, late


def overload(server: Server, report: Report, args: argparse.Namespace) -> None:
    """Capacity from a closed loop, then 2× it offered open-loop."""
    port = server.port
    body = json.dumps(solve_body(args.iters)).encode()
    asyncio_run(closed_loop(port, body, args.clients, args.warmup_s))
    answers = asyncio_run(closed_loop(port, body, args.clients, args.capacity_s))
    ok = sum(a.status == 200 for a in answers)
    capacity = ok / args.capacity_s
    report.add(
        "capacity",
        clients=args.clients,
        seconds=args.capacity_s,
        answered=ok,
        per_s=round(capacity, 1),
        other=len(answers) - ok,
    )
    rate = 2 * capacity
    answers, late = asyncio_run(open_loop(port, body, rate, args.overload_s, args.overload_workers))
    codes = Counter(a.status for a in answers)
    accepted = [a.latency_s for a in answers if a.status == 200]
    report.add(
        "overload",
        offered_per_s=round(rate, 1),
        seconds=args.overload_s,
        sent=len(answers),
        accepted=codes[200],
        refused_429=codes[429],
        lost=codes[0],
        errors_5xx=sum(n for c, n in codes.items() if c >= 500),
        other=sum(n for c, n in codes.items() if c not in (0, 200, 429) and c < 500),
        p50_accepted_ms=round(pct(accepted, 0.5) * 1e3, 1),
        p99_accepted_ms=round(pct(accepted, 0.99) * 1e3, 1),
        worst_arrival_lateness_ms=round(late * 1e3, 1),
    )


# -- 3: disconnect storms -----------------------------------------------------------------------


async def vanish_http(port: int, payload: bytes, clients: int, url: str) -> None:
    """`clients` connections send `payload` (a long solve), wait until every one is running or waiting,
    then drop at once without reading."""
    writers = []
    for _ in range(clients):
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(payload)
        writers.append(writer)
    await asyncio.to_thread(wait_rows, url, lambda r, w: r + w >= clients)
    for w in writers:
        w.transport.abort()


def vanish_ws(url: str, request: dict[str, Any], clients: int) -> None:
    """`clients` WebSocket streams start `request`, then drop their sockets without a close frame."""
    socks = []
    try:
        for _ in range(clients):
            sock, _ = _connect(url, "/v1/solve/stream", SETTLE_BOUND_S)
            socks.append(sock)
            sock.sendall(_frame(TEXT, json.dumps(request).encode()))
        wait_rows(url, lambda r, w: r + w >= clients)
    finally:
        for s in socks:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()


def storms(server: Server, report: Report, args: argparse.Namespace) -> None:
    """Long solves whose clients all vanish at once: how soon every row is freed, and what is left."""
    pid, url, port = server.proc.pid, server.url, server.port
    long_solve = solve_body(args.max_iters_cap)
    http = http_head(port, "/v1/solve", json.dumps(long_solve).encode())
    sse = http_head(port, "/v1/solve", json.dumps(long_solve | {"stream": True}).encode())
    kinds: dict[str, Callable[[], Any]] = {
        "http": lambda: asyncio_run(vanish_http(port, http, STORM_CLIENTS, url)),
        "sse": lambda: asyncio_run(vanish_http(port, sse, STORM_CLIENTS, url)),
        "ws": lambda: vanish_ws(url, long_solve | {"return": {"every": 1000}}, STORM_CLIENTS),
    }
    for kind, storm in kinds.items():
        before = (fds(pid), rss_mb(pid))
        storm()
        freed = wait_rows(url, lambda r, w: r == 0 and w == 0)
        time.sleep(1.0)  # the sockets' closes to be processed before the fds are counted
        after = (fds(pid), rss_mb(pid))
        report.add(
            f"storm_{kind}",
            clients=STORM_CLIENTS,
            freed_s=round(freed, 2),
            fds_before=before[0],
            fds_after=after[0],
            rss_mb_before=round(before[1], 1),
            rss_mb_after=round(after[1], 1),
        )


# -- 4: concurrent streams ----------------------------------------------------------------------


def streams(server: Server, report: Report, args: argparse.Namespace) -> None:
    """STREAMS WebSocket streams at once, each to its result."""
    request = solve_body(args.iters, **{"return": {"every": 10}})
    finals: list[str] = []
    lock = threading.Lock()

    def one() -> None:
        try:
            run = stream_solve(server.url, request, timeout=ANSWER_BOUND_S)
            final = run.final.get("status", run.final.get("type", "?"))
        except (WsError, OSError) as exc:
            final = type(exc).__name__
        with lock:
            finals.append(final)

    start = time.monotonic()
    threads = [threading.Thread(target=one) for _ in range(STREAMS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(ANSWER_BOUND_S + SETTLE_BOUND_S)
    outcomes = Counter(finals)
    report.add(
        "streams",
        streams=STREAMS,
        completed=outcomes["max_iters"],
        outcomes=dict(outcomes),
        unanswered=STREAMS - len(finals),
        seconds=round(time.monotonic() - start, 1),
    )


# -- 5: soak -----------------------------------------------------------------------------------


def soak(server: Server, report: Report, args: argparse.Namespace) -> None:
    """Mixed traffic for `--soak-s`: closed-loop HTTP solves, SSE solves and WS streams; RSS and fds
    sampled every few seconds; growth measured from the end of the warm-up (a quarter, at most 60 s)."""
    pid, port = server.proc.pid, server.port
    end = time.monotonic() + args.soak_s
    warm_end = time.monotonic() + min(60.0, args.soak_s / 4)
    rng = random.Random(0)
    bodies = [
        json.dumps({"model": MODEL, "input": {"x": [rng.uniform(0.05, 1.0) for _ in range(4)]}}).encode()
        for _ in range(64)
    ]
    sse = [json.dumps(json.loads(b) | {"stream": True}).encode() for b in bodies]
    codes: Counter[int] = Counter()
    ws_finals: Counter[str] = Counter()
    samples: list[tuple[float, float, int]] = []

    async def http_client(pool: list[bytes]) -> None:
        conn = Connection("127.0.0.1", port)
        while time.monotonic() < end:
            codes[(await post(conn, rng.choice(pool))).status] += 1
        await conn.close()

    async def ws_client() -> None:
        while time.monotonic() < end:
            request = json.loads(rng.choice(bodies)) | {"return": {"every": 5}}
            try:
                run = await asyncio.to_thread(stream_solve, server.url, request, 0.0, ANSWER_BOUND_S)
                ws_finals[run.final.get("status", run.final["type"])] += 1
            except (WsError, OSError) as exc:
                ws_finals[type(exc).__name__] += 1

    async def sampler() -> None:
        while time.monotonic() < end:
            samples.append((time.monotonic(), rss_mb(pid), fds(pid)))
            await asyncio.sleep(min(5.0, args.soak_s / 20))

    async def main() -> None:
        await asyncio.gather(
            *(http_client(bodies) for _ in range(6)),
            *(http_client(sse) for _ in range(2)),
            *(ws_client() for _ in range(2)),
            sampler(),
        )

    asyncio_run(main())
    samples.append((time.monotonic(), rss_mb(pid), fds(pid)))
    warm = next(s for s in samples if s[0] >= warm_end)
    last = samples[-1]
    growth = (last[1] - warm[1]) / warm[1]
    report.add(
        "soak",
        seconds=args.soak_s,
        http_answers=dict(codes),
        ws_finals=dict(ws_finals),
        errors=sum(n for c, n in codes.items() if c != 200)
        + sum(n for k, n in ws_finals.items() if k not in OK),
        rss_mb_warm=round(warm[1], 1),
        rss_mb_end=round(last[1], 1),
        rss_growth_pct=round(100 * growth, 2),
        rss_growth_under_5pct=growth < RSS_GROWTH_BOUND,
        fds_warm=warm[2],
        fds_end=last[2],
        fds_min_max=[min(s[2] for s in samples), max(s[2] for s in samples)],
    )


# -- 6: slowloris -------------------------------------------------------------------------------


async def trickle(port: int, seconds: float, closed: list[int]) -> None:
    """One connection sending its request's headers a byte a second for `seconds`; counts itself in
    `closed` when the server closes it first."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    end = time.monotonic() + seconds
    data = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * int(seconds + 10)
    try:
        for byte in data:
            if time.monotonic() >= end:
                return
            writer.write(bytes([byte]))
            await writer.drain()
            with contextlib.suppress(TimeoutError):
                if await asyncio.wait_for(reader.read(1), 1.0) == b"":
                    closed.append(1)
                    return
    except ConnectionError:
        closed.append(1)
    finally:
        writer.transport.abort()


def slowloris(server: Server, report: Report, args: argparse.Namespace) -> None:
    """Normal solves' p99 alone, then while TRICKLERS connections trickle their headers for a while
    longer than the server's header timeout (10 s by default)."""
    port = server.port
    body = json.dumps({"model": MODEL, "input": {"x": [0.5]}}).encode()
    alone = asyncio_run(closed_loop(port, body, 4, args.slowloris_s))

    async def attacked() -> tuple[list[Answer], list[int]]:
        closed: list[int] = []
        tricklers = asyncio.gather(*(trickle(port, args.slowloris_s + 2, closed) for _ in range(TRICKLERS)))
        await asyncio.sleep(1.0)  # every trickler connected and started
        answers = await closed_loop(port, body, 4, args.slowloris_s)
        await tricklers
        return answers, closed

    during, closed = asyncio_run(attacked())
    ms = [a.latency_s * 1e3 for a in alone if a.status == 200]
    ms_during = [a.latency_s * 1e3 for a in during if a.status == 200]
    report.add(
        "slowloris",
        tricklers=TRICKLERS,
        seconds=args.slowloris_s,
        p99_ms_alone=round(pct(ms, 0.99), 1),
        p99_ms_during=round(pct(ms_during, 0.99), 1),
        answered_during=len(ms_during),
        failed_during=len(during) - len(ms_during),
        tricklers_closed_by_server=len(closed),
    )


# -- 7: SIGTERM drain ---------------------------------------------------------------------------


def drain(server: Server, report: Report, args: argparse.Namespace) -> None:
    """SIGTERM while solves run (HTTP and WS, each ending by its own deadline within the drain): every
    one answered, the exit status 0, the time to exit."""
    url = server.url
    endless = solve_body(args.max_iters_cap)
    endless["budget"]["timeout_s"] = DRAIN_SOLVE_S
    answers: list[str] = []
    lock = threading.Lock()

    def http_one() -> None:
        try:
            r = httpx.post(f"{url}/v1/solve", json=endless, timeout=ANSWER_BOUND_S)
            got = r.json().get("status", str(r.status_code)) if r.status_code == 200 else str(r.status_code)
        except httpx.HTTPError as exc:
            got = type(exc).__name__
        with lock:
            answers.append(got)

    def ws_one() -> None:
        try:
            run = stream_solve(url, endless | {"return": {"every": 1000}}, timeout=ANSWER_BOUND_S)
            got = run.final.get("status", "error")
        except (WsError, OSError) as exc:
            got = type(exc).__name__
        with lock:
            answers.append(got)

    threads = [threading.Thread(target=http_one) for _ in range(args.drain_clients)]
    threads += [threading.Thread(target=ws_one) for _ in range(args.drain_clients // 2)]
    for t in threads:
        t.start()
    wait_rows(url, lambda r, w: r + w >= len(threads))
    start = time.monotonic()
    server.proc.send_signal(signal.SIGTERM)
    code = server.proc.wait(ANSWER_BOUND_S)
    exit_s = time.monotonic() - start
    for t in threads:
        t.join(SETTLE_BOUND_S)
    outcomes = Counter(answers)
    report.add(
        "drain",
        in_flight=len(threads),
        answered=outcomes["deadline"] + outcomes["converged"],
        outcomes=dict(outcomes),
        exit_status=code,
        exit_s=round(exit_s, 2),
    )


# -- main ---------------------------------------------------------------------------------------


def print_table(report: Report) -> None:
    """The figures as a table, one row per phase."""
    f = report.figures
    o, c = f["overload"], f["capacity"]
    rows = [
        ("capacity", f"{c['per_s']} solves/s ({c['clients']} clients, {c['seconds']} s)"),
        (
            "2x overload",
            f"{o['offered_per_s']}/s for {o['seconds']} s: {o['accepted']} accepted, "
            f"{o['refused_429']} refused 429, {o['lost']} lost, {o['errors_5xx']} 5xx, "
            f"p99 accepted {o['p99_accepted_ms']} ms",
        ),
    ]
    for kind in ("http", "sse", "ws"):
        s = f[f"storm_{kind}"]
        rows.append(
            (
                f"storm {kind}",
                f"{s['clients']} vanish: rows freed in {s['freed_s']} s, fds {s['fds_before']}"
                f"->{s['fds_after']}, RSS {s['rss_mb_before']}->{s['rss_mb_after']} MB",
            )
        )
    s = f["streams"]
    rows.append(
        (
            "streams",
            f"{s['streams']} at once: {s['completed']} completed, {s['unanswered']} unanswered, "
            f"{s['seconds']} s",
        )
    )
    s = f["soak"]
    rows.append(
        (
            "soak",
            f"{s['seconds']} s: {s['errors']} errors, RSS {s['rss_mb_warm']}->{s['rss_mb_end']} MB "
            f"({s['rss_growth_pct']:+} %), fds {s['fds_warm']}->{s['fds_end']} "
            f"(range {s['fds_min_max'][0]}-{s['fds_min_max'][1]})",
        )
    )
    s = f["slowloris"]
    rows.append(
        (
            "slowloris",
            f"{s['tricklers']} trickling: p99 {s['p99_ms_alone']} -> {s['p99_ms_during']} ms, "
            f"{s['failed_during']} failed, {s['tricklers_closed_by_server']} closed by server",
        )
    )
    s = f["drain"]
    rows.append(
        (
            "SIGTERM",
            f"{s['answered']}/{s['in_flight']} in flight answered, exit {s['exit_status']} "
            f"after {s['exit_s']} s",
        )
    )
    print()
    for name, text in rows:
        print(f"{name:<12} {text}")


def main() -> None:
    """Run every phase against one server; print the table and the JSON line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--iters", type=int, default=1000, help="iterations of each solve (its cost)")
    parser.add_argument("--clients", type=int, default=128, help="closed-loop clients measuring capacity")
    parser.add_argument("--warmup-s", type=float, default=5.0)
    parser.add_argument("--capacity-s", type=float, default=20.0)
    parser.add_argument("--overload-s", type=float, default=60.0)
    parser.add_argument("--overload-workers", type=int, default=600, help="connections the open loop may use")
    parser.add_argument("--soak-s", type=float, default=600.0)
    parser.add_argument("--slowloris-s", type=float, default=15.0)
    parser.add_argument("--drain-clients", type=int, default=20)
    parser.add_argument("--max-iters-cap", type=int, default=10**7)
    args = parser.parse_args()

    began = time.monotonic()
    flags = ["--models", MODEL, "--max-iters-cap", str(args.max_iters_cap)]
    print(
        f"eqserve reliability: {os.cpu_count()} CPUs ({cpu_model()}), eqserve serve {' '.join(flags)}",
        flush=True,
    )
    report = Report()
    with Server(flags) as server:
        server.wait_ready()
        phases: list[Callable[[Server, Report, argparse.Namespace], None]] = [
            overload,
            storms,
            streams,
            soak,
            slowloris,
            drain,
        ]
        for phase in phases:
            print(f"{phase.__name__} ...", flush=True)
            phase(server, report, args)
    print_table(report)
    machine = {
        "cpu_count": os.cpu_count(),
        "cpu_model": cpu_model(),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
    load = os.getloadavg()[0]
    print(
        json.dumps(
            {
                "bench": "reliability",
                "args": vars(args),
                **report.figures,
                "machine": machine,
                "loadavg_1m_at_end": round(load, 2),
                "total_s": round(time.monotonic() - began, 1),
            }
        )
    )


if __name__ == "__main__":
    main()
