"""The looped LM served: continuous batching over tokens and recurrence steps against the batch that
waits for its slowest row and against one request at a time; and adaptive exit against a fixed r.

- Scheduling: 32 clients, each sending its next completion as soon as the last one is answered, for
  a fixed number of completions in all; each completion picks a per-token budget and exit rule
  (latent-diff or KL at mixed thresholds, or a fixed r) and a prompt of the held-out task, so rows
  differ in how many steps their tokens take. Tokens per second (completion tokens, the end token
  included) under three policies of the same engine: `continuous` (rows join and leave between
  steps), `static` (the reference `generate`: a batch admitted together, every token waits for the
  batch's slowest row, answers go out together) and one request at a time (`continuous` with one row).
  A prompt's loop is its first token's: the whole prompt advances one core step per batch step until
  its request's rule or budget; under `static` it waits for the batch's slowest, computed as the
  reference computes it. Each policy's work is counted too: batch steps,
  decoding row-steps (a token's core step, or a waiting row's repeat) and prompt position-steps (a
  prompt position's core step). Either kind of position-step runs one position through the core
  block, so a batch step costs a fixed part plus its position-steps' work, and static's time over
  continuous's is at most the larger of their ratios of batch steps and of position-steps, on any
  machine: the bound printed beside the measured ratio.
- Adaptive vs fixed: prompts of the trained lengths answered with a fixed r per token, for each r,
  and with latent-diff exit at a range of thresholds under a cap. A word of n letters needs about
  n steps (the product moves about one position per step) and its end token hardly any, so a fixed r
  must cover the longest word while an exit rule may stop each token once its state settles. For the
  accuracy the best fixed r reaches, the fewest mean iterations per token of each side that reaches
  it, and their ratio, over the generated tokens (the first one's count is its prompt's loop).

One torch thread. A table, then with --json one line of ratios.

    .venv/bin/python bench/looped_lm.py [--quick] [--json]
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from eqserve.engine.completion import CompletionJob, CompletionResult
from eqserve.engine.tokens import TokenEngine
from eqserve.models.looped import ExitRule, LoopedLM
from eqserve.models.looped_lm.data import TEST_LENGTHS, TRAIN_LENGTHS, sample
from eqserve.models.looped_lm.model import Prefill
from eqserve.models.registry import load_model

CLIENTS = 32
CAP = 32
"""Per-token recurrence cap of every request (and its prompt's prefill budget)."""
FIXED_R = (2, 4, 8, 10, 11, 12, 13, 14, 16, 24, 32)
THRESHOLDS = (2e-1, 1e-1, 5e-2, 3e-2, 1e-2, 5e-3, 2e-3, 1e-3, 5e-4, 1e-4)
GOALS = {"continuous_vs_static": 2.0, "fixed_vs_adaptive_iters": 1.5}


def mixed_rules(rng: random.Random) -> ExitRule:
    """One request's per-token budget: a criterion at a threshold, or a fixed r."""
    kind = rng.choice(("latent", "latent", "kl", "fixed"))
    if kind == "latent":
        return ExitRule("latent-diff", threshold=rng.choice((1e-2, 3e-3, 1e-3)), min_steps=2, max_iters=CAP)
    if kind == "kl":
        return ExitRule("kl", threshold=rng.choice((1e-3, 1e-4)), min_steps=2, check_every=2, max_iters=CAP)
    return ExitRule("none", max_iters=rng.choice((8, 16, 32)))


WORK = ("batch steps", "decoding row-steps", "prompt position-steps")


def _positions(work: dict[str, int]) -> int:
    """Position-steps of either kind: each runs one position through the core block."""
    return work["decoding row-steps"] + work["prompt position-steps"]


def count_work(model: LoopedLM) -> dict[str, int]:
    """Make `model` count the decoding row-steps and prompt position-steps the engine asks of it, into
    the dict returned (the engine counts its batch steps)."""
    work = dict.fromkeys(WORK, 0)
    batch_step = model.batch_step

    def counted(
        s: torch.Tensor | None,
        e: torch.Tensor | None,
        caches: list,
        steps: list[int],
        prompts: list[Prefill],
        repeat: list[bool],
    ) -> tuple[torch.Tensor | None, list[torch.Tensor | None]]:
        work["decoding row-steps"] += len(steps)
        work["prompt position-steps"] += sum(st.e.shape[1] for st in prompts)
        return batch_step(s, e, caches, steps, prompts, repeat)

    model.batch_step = counted  # type: ignore[method-assign]
    return work


def serve(
    model: LoopedLM, work: dict[str, int], batching: str, rows: int, jobs: list[CompletionJob]
) -> tuple[float, int, dict[str, int]]:
    """Wall seconds, completion tokens and the model's work (counted into `work`) for `jobs`, sent by
    CLIENTS closed-loop clients."""
    engine = TokenEngine(model, max_batch_rows=rows, max_queue=len(jobs), batching=batching)
    work.update(dict.fromkeys(WORK, 0))
    engine.start()
    todo = list(jobs)
    lock = threading.Lock()
    tokens = [0]

    def client() -> None:
        while True:
            with lock:
                if not todo:
                    return
                job = todo.pop()
            result: CompletionResult = engine.submit(job).result(timeout=600)
            with lock:
                tokens[0] += len(result.iterations)

    start = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(CLIENTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seconds = time.perf_counter() - start
    engine.stop()
    return seconds, tokens[0], {**work, "batch steps": engine.scheduler.steps}


def scheduling(model: LoopedLM, n: int, rounds: int) -> tuple[dict[str, float], int, dict[str, dict]]:
    """Seconds each policy takes for the same completions (best of `rounds`, policies interleaved within
    a round), the completion tokens they produce and the work of each policy's last run."""
    rng = random.Random(7)
    pairs = sample(n, (TRAIN_LENGTHS[1] // 2, TEST_LENGTHS[1]), seed=11)
    specs = [(model.encode(p), mixed_rules(rng)) for p, _ in pairs]

    def jobs() -> list[CompletionJob]:
        return [CompletionJob(f"b{i}", list(p), max_tokens=4, rule=r) for i, (p, r) in enumerate(specs)]

    best: dict[str, float] = {}
    tokens = {}
    work = {}
    counter = count_work(model)
    for _ in range(rounds):
        for name, batching, rows in (
            ("continuous", "continuous", CLIENTS),
            ("static", "static", CLIENTS),
            ("one at a time", "continuous", 1),
        ):
            seconds, tokens[name], work[name] = serve(model, counter, batching, rows, jobs())
            best[name] = min(best.get(name, float("inf")), seconds)
    if len(set(tokens.values())) != 1:
        raise RuntimeError(f"the policies answered with different token counts: {tokens}")
    return best, tokens["continuous"], work


def answer_all(model: LoopedLM, prompts: list[list[int]], rule: ExitRule) -> list[CompletionResult]:
    """Greedy completions of every prompt under `rule`, batched by the engine."""
    engine = TokenEngine(model, max_batch_rows=64, max_queue=len(prompts))
    futures = [
        engine.submit(CompletionJob(f"a{i}", p, max_tokens=3, rule=rule)) for i, p in enumerate(prompts)
    ]
    engine.start()
    try:
        return [f.result(timeout=600) for f in futures]
    finally:
        engine.stop()


def adaptive(model: LoopedLM, n: int) -> tuple[list[dict], list[dict]]:
    """Accuracy and mean iterations per token at the trained lengths: fixed r, and latent-diff exits."""
    pairs = sample(n, TRAIN_LENGTHS, seed=1_000_003)
    prompts = [model.encode(p) for p, _ in pairs]

    def score(rule: ExitRule) -> dict:
        results = answer_all(model, prompts, rule)
        right = sum(
            r.text == a and r.finish_reason == "stop" for r, (_, a) in zip(results, pairs, strict=True)
        )
        its = [n for r in results for n in r.iterations]
        return {"accuracy": right / len(pairs), "mean_iters": sum(its) / len(its)}

    fixed = [{"r": r, **score(ExitRule("none", max_iters=r))} for r in FIXED_R]
    exits = [
        {"threshold": t, **score(ExitRule("latent-diff", threshold=t, min_steps=2, max_iters=CAP))}
        for t in THRESHOLDS
    ]
    return fixed, exits


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="fewer completions and rounds")
    p.add_argument("--json", action="store_true", help="print one JSON line of ratios at the end")
    args = p.parse_args()
    torch.set_num_threads(1)
    model = load_model("looped-lm")
    n_sched, rounds, n_eval = (96, 1, 128) if args.quick else (256, 2, 256)

    seconds, tokens, work = scheduling(model, n_sched, rounds)
    tps = {name: tokens / v for name, v in seconds.items()}
    print(f"looped-lm, {CLIENTS} clients, {n_sched} completions, mixed budgets and exit rules")
    print(f"{'policy':<16}{'tokens/s':>10}{'seconds':>10}" + "".join(f"{w:>24}" for w in WORK))
    for name, v in tps.items():
        counts = "".join(f"{work[name][w]:>24}" for w in WORK)
        print(f"{name:<16}{v:>10.1f}{seconds[name]:>10.2f}{counts}")
    static, cont = work["static"], work["continuous"]
    steps = static["batch steps"] / cont["batch steps"]
    positions = _positions(static) / _positions(cont)
    bound = max(steps, positions)
    print(
        f"static runs {steps:.2f}x continuous's batch steps and {positions:.2f}x its position-steps: "
        f"no machine can see continuous more than {bound:.2f}x faster on this load"
    )

    fixed, exits = adaptive(model, n_eval)
    print(f"\n{n_eval} prompts of the trained lengths {TRAIN_LENGTHS}: accuracy, mean iterations per token")
    print(f"{'rule':<24}{'accuracy':>10}{'mean iters':>12}")
    for f in fixed:
        print(f"{'fixed r=' + str(f['r']):<24}{f['accuracy']:>10.3f}{f['mean_iters']:>12.2f}")
    for e in exits:
        print(
            f"{'latent-diff < ' + format(e['threshold'], 'g'):<24}"
            f"{e['accuracy']:>10.3f}{e['mean_iters']:>12.2f}"
        )
    target = max(f["accuracy"] for f in fixed)
    fixed_cost = min(f["mean_iters"] for f in fixed if f["accuracy"] >= target)
    reached = [e["mean_iters"] for e in exits if e["accuracy"] >= target]
    adaptive_cost = min(reached) if reached else float("nan")
    print(
        f"\nat accuracy ≥ {target:.3f}: fixed r needs {fixed_cost:.2f} iterations per token, "
        "latent-diff exit " + (f"{adaptive_cost:.2f}" if reached else "never reaches it")
    )
    ratios = {
        "continuous_vs_static": tps["continuous"] / tps["static"],
        "bound_vs_static": bound,
        "continuous_vs_one_at_a_time": tps["continuous"] / tps["one at a time"],
        "fixed_vs_adaptive_iters": fixed_cost / adaptive_cost if reached else 0.0,
        "accuracy_target": target,
    }
    if args.json:
        print(json.dumps({"bench": "looped_lm", "machine": platform.machine(), **ratios, "goals": GOALS}))


if __name__ == "__main__":
    main()
