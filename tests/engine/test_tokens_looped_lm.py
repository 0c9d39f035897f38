"""The token engine on the shipped looped LM: a prompt's tokens and per-token iterations are the same
alone and inside a batch of other prompts, budgets and exit rules, and under the static baseline."""

from __future__ import annotations

import itertools

import pytest
import torch

from eqserve.engine.completion import CompletionJob, CompletionResult
from eqserve.engine.tokens import TokenEngine
from eqserve.models.looped import ExitRule, LoopedLM
from eqserve.models.looped_lm.data import TEST_LENGTHS, TRAIN_LENGTHS, sample
from eqserve.models.registry import load_model

_ids = itertools.count()


@pytest.fixture(scope="module")
def model() -> LoopedLM:
    return load_model("looped-lm")  # type: ignore[return-value]


def complete(
    model: LoopedLM, specs: list[tuple[str, ExitRule]], batching: str = "continuous"
) -> list[CompletionResult]:
    engine = TokenEngine(model, max_batch_rows=len(specs), batching=batching)
    jobs = [CompletionJob(f"t{next(_ids)}", model.encode(p), max_tokens=3, rule=r) for p, r in specs]
    futures = [engine.submit(j) for j in jobs]  # queued before the worker starts: one batch
    engine.start()
    try:
        return [f.result(timeout=120) for f in futures]
    finally:
        engine.stop()


def test_alone_and_in_a_mixed_batch_and_under_the_static_baseline(model: LoopedLM):
    prompts = [p for p, _ in sample(7, (TRAIN_LENGTHS[1] // 2, TEST_LENGTHS[1]), seed=5)]
    probe = (prompts[0], ExitRule("latent-diff", threshold=1e-3, min_steps=2, max_iters=24))
    mates = [
        (prompts[1], ExitRule("kl", threshold=1e-4, min_steps=2, check_every=2, max_iters=20)),
        (prompts[2], ExitRule("none", max_iters=5)),
        (prompts[3], ExitRule("latent-diff", threshold=1e-2, min_steps=1, max_iters=32)),
        (prompts[4], ExitRule("entropy-diff", threshold=1e-3, min_steps=3, check_every=3, max_iters=16)),
        (prompts[5], ExitRule("argmax-stability", threshold=3, max_iters=12)),
        (prompts[6], ExitRule("none", max_iters=17)),
    ]
    (alone,) = complete(model, [probe])
    mixed = complete(model, [*mates[:3], probe, *mates[3:]])[3]
    static = complete(model, [*mates[:3], probe, *mates[3:]], batching="static")[3]
    assert alone.tokens, "the probe answered nothing"
    for other in (mixed, static):
        assert (other.tokens, other.iterations, other.exit_values) == (
            alone.tokens,
            alone.iterations,
            alone.exit_values,
        )


def test_a_prompt_loops_in_the_batch_until_its_rule(model: LoopedLM, monkeypatch) -> None:
    """A prompt's loop is its first new token's: a latent-diff request's prompt stops once the
    prompt's states settle and a KL request's once its last position's next-token distribution does,
    both before the budget a fixed-r request's prompt runs to; the first token's iterations are its
    prompt's steps, and all three answer the word's product."""
    calls: dict[str, int] = {}
    step = model.batch_step

    def counted(*args: object) -> object:
        for state in args[4]:  # the prompts stepped
            key = str(id(state))
            calls[key] = calls.get(key, 0) + 1
        return step(*args)

    monkeypatch.setattr(model, "batch_step", counted)
    ((word, answer),) = sample(1, (12, 12), seed=3)
    rules = [
        ExitRule("latent-diff", threshold=1e-3, min_steps=2, max_iters=48),
        ExitRule("kl", threshold=1e-4, min_steps=2, check_every=2, max_iters=48),
        ExitRule("none", max_iters=48),
    ]
    results = complete(model, [(word, rule) for rule in rules])
    assert [model.decode(r.tokens) for r in results] == [answer] * 3
    firsts = [r.iterations[0] for r in results]
    assert sorted(calls.values()) == sorted(firsts), (calls, firsts)
    assert firsts[2] == 48 and all(2 < n < 48 for n in firsts[:2]), firsts
    assert results[1].exited[0] and firsts[1] % 2 == 0


def test_a_fixed_r_prompt_answers_what_the_whole_sequence_pass_answers(model: LoopedLM) -> None:
    """Under a fixed r the first new token is the argmax of the whole-sequence pass at r steps."""
    words, steps = [w for w, _ in sample(4, TRAIN_LENGTHS, seed=9)], (3, 7, 12, 20)
    results = complete(model, [(w, ExitRule("none", max_iters=r)) for w, r in zip(words, steps, strict=True)])
    for w, r, res in zip(words, steps, results, strict=True):
        with torch.no_grad():
            logits, _ = model(torch.tensor([model.encode(w)]), r)
        assert res.tokens[:1] == [int(logits[0, -1].argmax())] and res.iterations[0] == r
