"""looped-lm through the LoopedLM contract: incremental decoding equals the whole-sequence pass, the
cache reads a token that stopped sooner at its latest step, and batched calls give each row its own bits."""

from __future__ import annotations

import copy

import pytest
import torch

from eqserve.kernels import invariant
from eqserve.models.looped_lm import checkpoint
from eqserve.models.looped_lm.cache import LoopedCache
from eqserve.models.looped_lm.evaluate import greedy_looped, greedy_parallel, held_out
from eqserve.models.looped_lm.model import LoopedTransformer
from eqserve.models.shipped import WEIGHTS_DIR
from tests.models.looped_reference import reference_logits, write_huginn

SHIPPED = WEIGHTS_DIR / "looped-lm.safetensors"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[LoopedTransformer, dict]:
    folder = tmp_path_factory.mktemp("huginn")
    tensors = write_huginn(folder, seed=1)
    return checkpoint.load(folder).eval(), tensors


def _run_token(model: LoopedTransformer, token: int, cache: LoopedCache, steps: int) -> torch.Tensor:
    e = model.embed([token], [cache])
    s = model.init_state(e)
    for j in range(steps):
        s = model.core_step(s, e, [cache], [j])
    return model.logits(s, [cache], commit=True)[0]


@pytest.mark.parametrize("steps", [1, 3])
def test_incremental_decoding_equals_the_whole_sequence_pass(tiny: tuple, steps: int) -> None:
    model, _ = tiny
    prompt = [3, 1, 4, 1, 5]
    with torch.no_grad():
        cache = model.new_cache()
        model.prefill(prompt[:-1], steps, cache)
        seq, step_logits = list(prompt), []
        for _ in range(6):
            step_logits.append(_run_token(model, seq[-1], cache, steps))
            seq.append(int(step_logits[-1].argmax()))
        whole = model(torch.tensor([seq[:-1]]), steps)[0][0, len(prompt) - 1 :]
    torch.testing.assert_close(torch.stack(step_logits), whole, atol=1e-4, rtol=1e-4)
    assert whole.argmax(-1).tolist() == seq[len(prompt) :]
    assert cache.n == len(seq) - 1 and cache.steps == [steps] * cache.n


@pytest.mark.parametrize("steps", [1, 4])
def test_the_step_wise_prefill_writes_the_whole_sequence_pass_bits(tiny: tuple, steps: int) -> None:
    """`prefill` (step by step, as the engine runs it) fills the cache with the very entries the
    recorded whole-sequence pass computes, at every step."""
    model, _ = tiny
    tokens = [3, 1, 4, 1, 5, 2]
    with torch.no_grad():
        cache = model.new_cache()
        model.prefill(tokens, steps, cache)
        _, rec = model(torch.tensor([tokens]), steps, record=True)
    whole = model.new_cache()
    whole.fill(rec["prelude"][0][0], [c[0] for c in rec["core"]], rec["coda"][0][0])
    assert cache.n == whole.n == len(tokens) and cache.steps == whole.steps == [steps] * len(tokens)
    for layer in range(model.config.n_layers_in_prelude):
        assert all(torch.equal(a, b) for a, b in zip(cache.prelude(layer), whole.prelude(layer), strict=True))
    for layer in range(model.config.n_layers_in_coda):
        assert all(torch.equal(a, b) for a, b in zip(cache.coda(layer), whole.coda(layer), strict=True))
    for j in range(steps + 1):
        for layer in range(model.config.n_layers_in_recurrent_block):
            got, want = cache.core(j, layer), whole.core(j, layer)
            assert all(torch.equal(a, b) for a, b in zip(got, want, strict=True))
    with pytest.raises(ValueError, match="not 2"):
        state = model.prefill_start(tokens, model.new_cache(), 4)
        model.prefill_step([state], [False])
        model.prefill_finish(state, 2, model.new_cache())


def test_a_repeated_prefill_step_gives_the_last_states_again_and_keeps_nothing(tiny: tuple) -> None:
    model, _ = tiny
    tokens = [3, 1, 4, 1, 5, 2]
    with torch.no_grad():
        state = model.prefill_start(tokens, model.new_cache(), 4)
        model.prefill_step([state], [False])
        (last,) = model.prefill_step([state], [False])
        assert torch.equal(model.prefill_step([state], [True])[0], last) and len(state.core) == 2
        assert not torch.equal(model.prefill_step([state], [False])[0], last)


def test_a_prompts_peeked_distribution_is_the_one_it_emits(tiny: tuple) -> None:
    """`prefill_logits` (a criterion's peek, prompts packed) gives each prompt the logits
    `prefill_finish` then emits for its first new token, and the whole-sequence pass's last row."""
    model, _ = tiny
    prompts = [[3, 1, 4, 1, 5, 2], [2], [5, 5, 0, 1]]
    with torch.inference_mode(), invariant.mode(True):
        states = [model.prefill_start(p, model.new_cache(), 3) for p in prompts]
        for _ in range(3):
            model.prefill_step(states, [False] * len(states))
        peeked = model.prefill_logits(states)
        for p, st, peek in zip(prompts, states, peeked, strict=True):
            cache = model.new_cache()
            assert torch.equal(model.prefill_finish(st, 3, cache), peek) and cache.n == len(p)
            whole, _ = model(torch.tensor([p]), 3)
            torch.testing.assert_close(whole[0, -1], peek, atol=1e-5, rtol=1e-5)


def test_prompts_prefilled_in_one_call_get_their_bits_alone(tiny: tuple) -> None:
    """Prompts of different lengths at different steps, some repeating their last step, packed in
    one `prefill_step` call: each gets the states and cache it gets stepped alone."""
    model, _ = tiny
    prompts, ahead = [[3, 1, 4, 1, 5, 2], [2], [5, 5, 0, 1], [1, 2, 3, 4, 5, 0, 1, 2, 3]], [2, 0, 1, 3]
    repeat = [False, False, True, False]
    with torch.inference_mode(), invariant.mode(True):
        alone = [model.prefill_start(p, model.new_cache(), 4) for p in prompts]
        packed = [model.prefill_start(p, model.new_cache(), 4) for p in prompts]
        for a, b, n in zip(alone, packed, ahead, strict=True):
            for _ in range(n):
                model.prefill_step([a], [False])
                model.prefill_step([b], [False])
        together = model.prefill_step(packed, repeat)
        one_by_one = [model.prefill_step([a], [r])[0] for a, r in zip(alone, repeat, strict=True)]
        for a, b, x, y, n, r in zip(alone, packed, one_by_one, together, ahead, repeat, strict=True):
            assert x is not None and y is not None and torch.equal(x, y)
            assert len(a.core) == len(b.core) == n + (not r)
            assert all(torch.equal(u, v) for u, v in zip(a.core, b.core, strict=True))
            kept = []
            for state in (a, b):
                kept.append(model.new_cache())
                model.prefill_finish(state, len(state.core), kept[-1])
            pairs = zip(_state(kept[0], len(a.core)), _state(kept[1], len(b.core)), strict=True)
            assert all(torch.equal(u, v) for u, v in pairs)


def test_a_token_that_stopped_sooner_is_read_at_its_latest_step(tiny: tuple) -> None:
    model, tensors = tiny
    tokens, steps = [2, 5, 1, 3, 0], [2, 2, 5, 1, 4]
    with torch.no_grad():
        cache = model.new_cache()
        model.prefill(tokens[:2], 2, cache)
        late = zip(tokens[2:], steps[2:], strict=True)
        ours = torch.stack([_run_token(model, t, cache, r) for t, r in late])
    latest = reference_logits(tensors, tokens, steps, lookup="latest")[2:]
    torch.testing.assert_close(ours, latest, atol=1e-4, rtol=1e-4)
    # A cache that leaves out positions lacking the step (Huginn's `skip`) answers otherwise.
    assert not torch.allclose(ours, reference_logits(tensors, tokens, steps, lookup="skip")[2:], atol=1e-3)
    assert cache.steps == steps


def _state(cache: LoopedCache, steps: int) -> list[torch.Tensor]:
    out = []
    for layer in range(2):
        for j in range(steps):
            out += list(cache.core(j, layer))
    return out + list(cache.prelude(0)) + list(cache.coda(0))


def test_batched_calls_give_each_row_its_bits_alone(tiny: tuple) -> None:
    """Rows at different positions and inner steps, and prompts being prefilled, in one call, against
    the same calls row by row and prompt by prompt."""
    model, _ = tiny
    prompts, prefill_steps, head_start = [[1, 2], [3, 0, 4, 4, 1, 2], [5, 5, 5, 1]], [3, 1, 4], [0, 2, 1]
    with torch.inference_mode(), invariant.mode(True):
        caches = []
        for p, r in zip(prompts, prefill_steps, strict=True):
            caches.append(model.new_cache())
            model.prefill(p[:-1], r, caches[-1])
        alone = [copy.deepcopy(c) for c in caches]
        e = model.embed([p[-1] for p in prompts], caches)
        e_alone = [model.embed([p[-1]], [c]) for p, c in zip(prompts, alone, strict=True)]
        s = model.init_state(e)
        s_alone = [model.init_state(x) for x in e_alone]
        for i, ahead in enumerate(head_start):  # each row's own earlier steps, the same in both worlds
            for j in range(ahead):
                s[i : i + 1] = model.core_step(s[i : i + 1], e[i : i + 1], [caches[i]], [j])
                s_alone[i] = model.core_step(s_alone[i], e_alone[i], [alone[i]], [j])
        filled = [[2, 4, 1], [0, 3, 3, 5, 1]]
        fills = [model.prefill_start(p, model.new_cache(), 4) for p in filled]
        fills_alone = [model.prefill_start(p, model.new_cache(), 4) for p in filled]
        new, stepped = model.batch_step(s, e, caches, head_start, fills, [False, False])
        assert new is not None
        s = new
        for f, g, x in zip(fills_alone, fills, stepped, strict=True):
            y = model.prefill_step([f], [False])[0]
            assert x is not None and y is not None and torch.equal(x, y)
            assert torch.equal(f.core[0], g.core[0])
        rows = zip(s_alone, e_alone, alone, head_start, strict=True)
        s_alone = [model.core_step(x, y, [c], [j]) for x, y, c, j in rows]
        peek = model.logits(s, caches, commit=False)
        done = model.logits(s, caches, commit=True)
        for i in range(len(prompts)):
            assert torch.equal(e[i], e_alone[i][0])
            assert torch.equal(s[i], s_alone[i][0])
            assert torch.equal(peek[i], model.logits(s_alone[i], [alone[i]], commit=False)[0])
            assert torch.equal(done[i], model.logits(s_alone[i], [alone[i]], commit=True)[0])
            assert caches[i].steps == alone[i].steps
            got, want = _state(caches[i], max(caches[i].steps)), _state(alone[i], max(alone[i].steps))
            assert all(torch.equal(a, b) for a, b in zip(got, want, strict=True))


@pytest.mark.skipif(not SHIPPED.exists(), reason="no shipped looped-lm weights")
def test_the_shipped_model_decodes_alike_both_ways() -> None:
    """The eval's path (the contract, r fixed per token) and the whole-sequence pass give the same answers."""
    model = checkpoint.load(SHIPPED)
    prompts = held_out()[0][:8]
    for r in (2, 16):
        parallel = greedy_parallel(lambda x, r=r: model(x, r)[0], prompts, 3)
        assert greedy_looped(model, prompts, r, 3) == parallel
