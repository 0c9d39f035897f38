"""The token engine: per-token exit rules and budgets, continuous batching over tokens and inner
steps, and the static baseline, on a looped LM whose inner steps follow from its digits."""

from __future__ import annotations

import itertools
import time

import pytest
import torch

from eqserve.engine.completion import CompletionJob, CompletionResult, TokenEvent
from eqserve.engine.errors import ModelStepError
from eqserve.engine.tokens import TokenEngine
from eqserve.models.looped import ExitRule
from tests.looped_models import EOS, CountLM, rate

_ids = itertools.count()


def job(prompt: str, **kw: object) -> CompletionJob:
    rule = kw.pop("rule", ExitRule(max_iters=8))
    return CompletionJob(id=f"c{next(_ids)}", prompt=[int(c) for c in prompt], rule=rule, **kw)  # type: ignore[arg-type]


def run(jobs: list[CompletionJob], **kw: object) -> list[CompletionResult]:
    engine = TokenEngine(CountLM(), **kw)  # type: ignore[arg-type]
    engine.start()
    try:
        futures = [engine.submit(j) for j in jobs]
        return [f.result(timeout=30) for f in futures]
    finally:
        engine.stop()


def latent_diff_steps(digit: int, threshold: float, min_steps: int, cap: int) -> int:
    """The inner steps latent-diff takes on `digit`'s token, from the closed form of CountLM's loop:
    s_j = e (1 − a^j), so ‖s_j − s_{j−1}‖ / ‖s_j‖ = a^{j−1} (1 − a) / (1 − a^j)."""
    a = rate(digit)
    for j in range(1, cap + 1):
        if j >= min_steps and a ** (j - 1) * (1 - a) / (1 - a**j) < threshold:
            return j
    return cap


def test_fixed_budget_counts_up_to_the_end_token():
    (res,) = run([job("3", max_tokens=20)])
    assert res.text == "456789"
    assert res.tokens == [4, 5, 6, 7, 8, 9]  # the end token is not part of the answer
    assert res.finish_reason == "stop" and res.status == "ok"
    assert res.iterations == [8] * 7 and res.exited == [False] * 7
    assert res.prompt_tokens == 1


def test_latent_diff_stops_each_token_where_its_own_loop_converges():
    rule = ExitRule("latent-diff", threshold=1e-3, min_steps=2, max_iters=40)
    (res,) = run([job("25", rule=rule, max_tokens=3)])
    expected = [latent_diff_steps(d, 1e-3, 2, 40) for d in (5, 6, 7)]
    assert res.text == "678"
    assert res.iterations == expected
    assert len(set(expected)) > 1  # the digits' loops differ: the test sees per-token exits
    assert all(res.exited)
    assert all(v is not None and v < 1e-3 for v in res.exit_values)


def test_a_warm_start_begins_each_token_from_the_one_before():
    """Huginn's `continuous_compute`: each token's loop starts from the previous token's final state
    (the first new token's, from the prompt's last position), so its latent-diff steps are those of
    CountLM's loop from that state, not from zeros."""
    rule = ExitRule("latent-diff", threshold=1e-3, min_steps=1, max_iters=60)
    cold, warm = run([job("25", rule=rule, max_tokens=3, warm_start=w) for w in (False, True)])
    assert cold.text == warm.text == "678"

    def steps(digit: int, s: torch.Tensor) -> tuple[int, torch.Tensor]:
        a, e = rate(digit), torch.zeros(EOS + 1)
        e[digit + 1] = 2.0
        for j in range(1, 61):
            new = a * s + (1 - a) * e
            moved = float((new - s).norm() / new.norm())
            s = new
            if moved < 1e-3:
                return j, s
        return 60, s

    s, expected = torch.zeros(EOS + 1), []
    for digit in (5, 6, 7):
        n, s = steps(digit, s)
        expected.append(n)
    assert warm.iterations == expected and cold.iterations[0] == expected[0]
    assert warm.iterations[1:] != cold.iterations[1:]


def test_max_tokens_and_stop_strings():
    long, stopped = run([job("0", max_tokens=3), job("0", max_tokens=9, stop=("45", "7"))])
    assert (long.text, long.finish_reason) == ("123", "length")
    assert (stopped.text, stopped.finish_reason) == ("123", "stop")


def test_distribution_criteria_check_every_k_steps():
    rules = [
        ExitRule("kl", threshold=1e-4, min_steps=1, check_every=3, max_iters=60),
        ExitRule("entropy-diff", threshold=1e-4, min_steps=1, check_every=2, max_iters=60),
        ExitRule("argmax-stability", threshold=3, min_steps=1, check_every=1, max_iters=60),
    ]
    results = run([job("4", rule=r, max_tokens=2) for r in rules])
    for rule, res in zip(rules, results, strict=True):
        assert res.text == "56"
        assert all(res.exited)
        assert all(n % rule.check_every == 0 and n < rule.max_iters for n in res.iterations)
    assert results[2].iterations == [4, 4]  # the top token is right from step 1 and stable 3 checks on


def test_a_completion_is_the_same_alone_and_in_a_mixed_batch():
    """Tokens and per-token inner steps do not depend on the batch-mates, their budgets or rules."""
    mates = [
        job(p, rule=ExitRule(c, threshold=t, min_steps=m, check_every=k, max_iters=n), max_tokens=mt)
        for p, c, t, m, k, n, mt in [
            ("1", "latent-diff", 1e-2, 1, 1, 30, 6),
            ("77", "kl", 1e-5, 2, 2, 50, 4),
            ("5", "none", 0.0, 1, 1, 3, 9),
            ("30", "argmax-stability", 2, 1, 1, 12, 5),
        ]
    ]
    probe = {"rule": ExitRule("latent-diff", threshold=1e-4, min_steps=3, max_iters=25), "max_tokens": 7}
    alone = run([job("2", **probe)])[0]  # type: ignore[arg-type]
    batched = run([*mates[:2], job("2", **probe), *mates[2:]])[2]  # type: ignore[arg-type]
    assert (batched.tokens, batched.iterations, batched.exit_values) == (
        alone.tokens,
        alone.iterations,
        alone.exit_values,
    )


def test_static_baseline_answers_the_same_but_waits_for_the_slowest():
    jobs = lambda: [  # noqa: E731
        job("1", rule=ExitRule("latent-diff", threshold=1e-3, max_iters=40), max_tokens=3),
        job("8", rule=ExitRule("none", max_iters=2), max_tokens=1),
    ]
    cont, stat = run(jobs()), run(jobs(), batching="static")
    for a, b in zip(cont, stat, strict=True):
        assert (a.text, a.iterations) == (b.text, b.iterations)
    # static: the short completion is answered with its batch, so it was held as long as the long one
    assert stat[1].solve_ms >= 0.9 * stat[0].solve_ms
    assert cont[1].solve_ms < cont[0].solve_ms


def test_tokens_are_watched_as_they_are_decided():
    seen: list[TokenEvent] = []

    class Watch:
        def push(self, event: TokenEvent) -> None:
            seen.append(event)

    (res,) = run([job("6", max_tokens=9, watch=Watch())])
    assert [e.text for e in seen] == ["7", "8", "9", ""]
    assert [e.index for e in seen] == [0, 1, 2, 3] and seen[-1].token == EOS
    assert [e.iterations for e in seen] == res.iterations


def test_cancel_and_deadline_end_a_completion_with_what_it_has():
    engine = TokenEngine(CountLM())
    engine.start()
    try:
        slow = ExitRule("none", max_iters=10**6)
        cancelled = job("1", rule=slow, max_tokens=5)
        timed = job("1", rule=slow, max_tokens=5, timeout_s=0.05)
        fc, ft = engine.submit(cancelled), engine.submit(timed)
        time.sleep(0.05)
        cancelled.cancelled = True
        rc, rt = fc.result(timeout=30), ft.result(timeout=30)
        assert (rc.status, rc.finish_reason) == ("cancelled", "cancelled")
        assert rt.status == "deadline" and rt.tokens == []
        assert engine.idle
    finally:
        engine.stop()


def test_a_fault_in_the_step_fails_that_batch_and_the_engine_goes_on():
    engine = TokenEngine(CountLM(fail_on=4))
    engine.start()
    try:
        bad = engine.submit(job("3", max_tokens=5))  # its second token's loop runs on digit 4
        with pytest.raises(ModelStepError):
            bad.result(timeout=30)
        ok = engine.submit(job("6", max_tokens=2)).result(timeout=30)
        assert ok.text == "78"
    finally:
        engine.stop()


def test_a_fault_starting_one_prompt_fails_that_completion_alone():
    """Admitted together, a prompt the model fails to start fails alone; its batch-mates answer."""
    engine = TokenEngine(CountLM(fail_on=4))
    futures = [engine.submit(job(p, max_tokens=n)) for p, n in (("12", 1), ("45", 2), ("67", 2))]
    engine.start()
    try:
        with pytest.raises(ModelStepError, match="prefill"):
            futures[1].result(timeout=30)
        assert [futures[i].result(timeout=30).text for i in (0, 2)] == ["3", "89"]
    finally:
        engine.stop()


def test_rows_at_different_tokens_share_steps():
    """Queued before the worker starts, 20 completions of 3 tokens × 8 steps run 4 at a time: each
    batch step advances 4 rows, so the engine takes exactly 20 · 24 / 4 steps."""
    engine = TokenEngine(CountLM(), max_batch_rows=4, max_queue=64)
    futures = [engine.submit(job(str(d % 7), max_tokens=3)) for d in range(20)]
    engine.start()
    try:
        results = [f.result(timeout=60) for f in futures]
        assert [r.text for r in results] == ["".join(str(d % 7 + k) for k in (1, 2, 3)) for d in range(20)]
        assert engine.steps == 20 * 24 // 4
    finally:
        engine.stop()
