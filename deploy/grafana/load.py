"""A light, mixed load on the built-in models, so that every dashboard panel has something to show
(the preview picture is drawn from a server this drove): solves that converge, stop at max_iters, hit
their deadline or are cancelled, 4xx and 429 refusals, open streams, and looped-LM completions under
each exit criterion, some stopped by the rule and some by the budget.

    python -m deploy.grafana.load --url http://127.0.0.1:8000 --minutes 10

A few requests a second at most, and a short burst (429s, a waiting queue) every `--burst-s`; the
server should run with a small `--max-batch-rows` and `--max-queue` (4 and 4) for the burst to queue.
"""

from __future__ import annotations

import argparse
import random
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from eqserve.models.looped_lm.data import LETTERS
from eqserve.service.client import Client, EqserveError

LM = "looped-lm"
SOLVED = ("deq-mlp", "lp-gnn", "ns-fno", "reciprocal", "deblur")
EXITS = (
    {"criterion": "none"},
    {"criterion": "latent-diff", "threshold": 1e-3},
    {"criterion": "latent-diff", "threshold": 1e-3, "max_iters": 6},  # the budget stops most tokens
    {"criterion": "entropy-diff", "threshold": 1e-3},
    {"criterion": "kl", "threshold": 1e-3},
    {"criterion": "argmax-stability", "threshold": 4},
)
LONG = {"max_iters": 10_000, "tol": 0.0}
"""A budget none of the built-in models meets: the solve runs to its deadline or a cancel."""


class Load:
    """The requests, their outcomes counted (a status, an HTTP code, or a finish reason)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.client = Client(url, timeout=60)
        self.examples = {m: self.client.model(m)["example_input"] for m in SOLVED}
        self.seen: Counter[str] = Counter()
        self.lock = threading.Lock()

    def _count(self, what: str) -> None:
        with self.lock:
            self.seen[what] += 1

    def _try(self, call: Any, *args: Any, **kwargs: Any) -> None:
        try:
            out = call(*args, **kwargs)
            self._count(out.get("status", "ok"))
        except EqserveError as e:
            self._count(f"{e.status} {e.type}")

    def solves(self, i: int) -> None:
        """Every solved model at its defaults, one capped at 3 iterations, and now and then a deadline
        and a refused request (bad input, unknown model, budget over the cap)."""
        for m in SOLVED:
            self._try(self.client.solve, m, self.examples[m])
        m = SOLVED[i % len(SOLVED)]
        self._try(self.client.solve, m, self.examples[m], max_iters=3)
        if i % 4 == 0:
            self._try(self.client.solve, "deblur", self.examples["deblur"], timeout_s=0.3, **LONG)
        bad = (
            lambda: self.client.solve("reciprocal", {"x": [3.0], "eta": 1.0}),
            lambda: self.client.solve("no-such-model", {"x": [1.0]}),
            lambda: self.client.solve("deq-mlp", self.examples["deq-mlp"], max_iters=10**9),
            lambda: self.client.complete(LM, "xyz=", max_tokens=2),  # letters outside its vocabulary
        )
        if i % 3 == 0:
            self._try(bad[i // 3 % len(bad)])

    def completions(self, i: int) -> None:
        """Completions of random words of the built-in looped LM's task, one per exit rule."""
        for ex in EXITS:
            prompt = "".join(random.choice(LETTERS) for _ in range(random.randint(4, 12))) + "="
            self._try(self.client.complete, LM, prompt, max_tokens=4, **{"max_iters": 32} | ex)

    def streams(self, hold_s: float) -> None:
        """A solve stream cancelled after `hold_s` and a completion stream read to its end."""
        with self.client.stream("ns-fno", self.examples["ns-fno"], **LONG, timeout_s=30, every=10) as s:
            start = time.monotonic()
            for event in s:
                if event["type"] == "iterate" and time.monotonic() - start > hold_s:
                    s.cancel()
        self._count((s.result or {}).get("status", "no result"))
        with self.client.complete_stream(LM, "bdcfaebcdfea=", max_tokens=6, max_iters=32) as s:
            for _ in s:
                pass
        self._count("stream completion")

    def burst(self, n: int, hold_s: float) -> None:
        """`n` concurrent solves that run to their deadline: the batch fills, some wait, the rest 429."""
        with ThreadPoolExecutor(n) as pool:
            for _ in range(n):
                pool.submit(self._try, self.client.solve, "deblur", self.examples["deblur"],
                            timeout_s=hold_s, **LONG)  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--minutes", type=float, default=10)
    parser.add_argument("--pause-s", type=float, default=2.5, help="sleep between rounds")
    parser.add_argument("--burst-s", type=float, default=45, help="seconds between bursts and streams")
    args = parser.parse_args()
    load = Load(args.url)
    end = time.monotonic() + 60 * args.minutes
    i, next_burst = 0, time.monotonic() + 10
    while time.monotonic() < end:
        load.solves(i)
        load.completions(i)
        if time.monotonic() > next_burst:
            load.streams(hold_s=3)
            load.burst(10, hold_s=3)
            next_burst += args.burst_s
        i += 1
        time.sleep(args.pause_s)
    print(dict(load.seen))


if __name__ == "__main__":
    main()
