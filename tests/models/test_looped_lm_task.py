"""looped-lm's task (the product of a word in S3) and what the shipped weights do with it: the answer
needs the word multiplied in order, the targets teach every prefix, and on the held-out (longer) words
the shipped model's error falls as r grows, holds past it, and ends below its explicit twin's."""

from __future__ import annotations

import itertools

import pytest

from eqserve.models.looped_lm import checkpoint
from eqserve.models.looped_lm.data import (
    ELEMENTS,
    EOS,
    IGNORE,
    LETTERS,
    TEST_LENGTHS,
    TRAIN_LENGTHS,
    answer,
    batch,
    prefixes,
    times,
)
from eqserve.models.looped_lm.evaluate import error, greedy_parallel, held_out
from eqserve.models.looped_lm.explicit import ExplicitLM
from eqserve.models.looped_lm.train import EXPLICIT_WEIGHTS, WEIGHTS
from eqserve.models.shipped import WEIGHTS_DIR


def _apply(word: str, items: tuple[int, ...]) -> tuple[int, ...]:
    """The arrangement of three things after each letter's permutation in turn (item i goes to p[i])."""
    for c in word:
        p = ELEMENTS[LETTERS.index(c)]
        out = [0, 0, 0]
        for i, x in enumerate(items):
            out[p[i]] = x
        items = tuple(out)
    return items


def test_the_answer_is_the_word_multiplied_in_order() -> None:
    start = (0, 1, 2)
    for n in range(4):
        for word in map("".join, itertools.product(LETTERS, repeat=n)):
            assert _apply(answer(word), start) == _apply(word, start)
    swapped = [(a, b) for a in range(6) for b in range(6) if times(a, b) != times(b, a)]
    assert swapped, "S3 is not commutative: the order of the letters must matter"
    # Same letters, other order, other answer: counting letters cannot answer.
    assert answer("bd") != answer("db")


def test_every_position_is_taught_its_prefix_and_the_steps_it_needs() -> None:
    pairs = [("bdc=", answer("bdc")), ("f=", answer("f"))]
    x, y, depth = batch(pairs)
    assert x.shape == y.shape == depth.shape == (2, 5)
    assert y[0].tolist() == [*prefixes("bdc"), LETTERS.index(answer("bdc")), EOS]
    assert y[1].tolist() == [LETTERS.index("f"), LETTERS.index("f"), EOS, IGNORE, IGNORE]
    assert depth[0].tolist() == [1, 2, 3, 4, 0]
    assert x[1, 2].item() == LETTERS.index(answer("f")) and x[1, 3:].tolist() == [EOS, EOS]


@pytest.mark.skipif(not (WEIGHTS_DIR / WEIGHTS).exists(), reason="no shipped looped-lm weights")
def test_the_shipped_model_buys_accuracy_with_steps_on_longer_words() -> None:
    model = checkpoint.load(WEIGHTS_DIR / WEIGHTS).eval()
    baseline = ExplicitLM.from_weights(WEIGHTS_DIR / EXPLICIT_WEIGHTS).eval()
    prompts, wanted = [p[:96] for p in held_out()]
    enough = TEST_LENGTHS[1] + 1  # one step per letter and one for "="

    def err(r: int) -> float:
        return error(greedy_parallel(lambda x: model(x, r)[0], prompts, 3), wanted)

    short, reached, past = err(TRAIN_LENGTHS[1]), err(enough), err(2 * enough)
    explicit = error(greedy_parallel(baseline, prompts, 3), wanted)
    assert reached < short - 0.3, (short, reached)
    assert past <= reached + 0.1, (reached, past)
    assert min(reached, past) < explicit - 0.3, (reached, past, explicit)
