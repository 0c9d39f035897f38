"""The token engine on the shipped looped LM: a prompt's tokens and per-token iterations are the same
alone and inside a batch of other prompts, budgets and exit rules, and under the static baseline."""

from __future__ import annotations

import itertools

import pytest

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


def test_a_prompt_prefills_in_the_batch_loop_until_its_rule(model: LoopedLM, monkeypatch) -> None:
    """A latent-diff request's prompt stops its prefill once the prompt's states settle, before the
    budget a fixed-r request's prompt runs to; both answer the word's product."""
    calls: dict[int, int] = {}
    step = model.prefill_step

    def counted(state: object) -> object:
        calls[id(state)] = calls.get(id(state), 0) + 1
        return step(state)

    monkeypatch.setattr(model, "prefill_step", counted)
    ((word, answer),) = sample(1, (12, 12), seed=3)
    rules = [
        ExitRule("latent-diff", threshold=1e-3, min_steps=2, max_iters=48),
        ExitRule("none", max_iters=48),
    ]
    results = complete(model, [(word, rule) for rule in rules])
    assert sorted(calls.values())[1] == 48
    assert 12 <= sorted(calls.values())[0] < 48, calls
    assert [model.decode(r.tokens) for r in results] == [answer, answer]

