"""What crosses between a front and an engine process survives the trip: tensors (views, empty, 0-d,
any dtype numpy knows), engine errors with their attributes, a job without its future and watch; a
mirrored watch wants the iterates its front's watch wants."""

from __future__ import annotations

import pickle

import pytest
import torch

from eqserve.engine import wire
from eqserve.engine.errors import EngineDied, ModelStepError, QueueFull
from eqserve.engine.job import NEVER, EveryIterate, SolveJob


@pytest.mark.parametrize(
    "t",
    [
        torch.arange(12.0).reshape(3, 4)[:, 1],
        torch.zeros(0, 3),
        torch.tensor(3.5, dtype=torch.float64),
        torch.tensor([True, False]),
        torch.arange(6, dtype=torch.int32).reshape(2, 3).t(),
    ],
)
def test_tensors_round_trip(t: torch.Tensor) -> None:
    (back,) = wire.loads(wire.dumps([(t,)]))[0]
    assert back.dtype == t.dtype and back.shape == t.shape and torch.equal(back, t)


def test_a_view_carries_only_its_elements() -> None:
    big = torch.zeros(1000, 100)
    assert len(wire.dumps([(big[3:4],)])) < len(wire.dumps([(big,)])) / 100


def test_engine_errors_round_trip_with_their_attributes() -> None:
    step = pickle.loads(pickle.dumps(ModelStepError("m", ValueError("boom"))))
    assert step.model == "m" and "boom" in str(step)
    assert pickle.loads(pickle.dumps(QueueFull("m", 7))).retry_after == 7
    died = pickle.loads(pickle.dumps(EngineDied("m", started=True)))
    assert died.started and died.model == "m"


def test_a_portable_job_keeps_everything_but_its_future_and_watch() -> None:
    job = SolveJob(id="a", ctx={"x": torch.ones(1, 4)}, y0=torch.zeros(1, 4), max_iters=9, tol=1e-3)
    job.watch = EveryIterate(lambda *a: None)
    back = wire.loads(wire.dumps([(wire.portable(job),)]))[0][0]
    assert back.future is None and back.watch is None
    assert (back.id, back.max_iters, back.tol, back.method) == ("a", 9, 1e-3, "picard")
    assert torch.equal(back.ctx["x"], job.ctx["x"]) and job.watch is not None and not job.future.done()


def test_a_mirrored_watch_wants_what_its_front_wants() -> None:
    sent: list[tuple] = []
    every3 = wire.MirrorWatch(sent.append, "a", wire.schedule(EveryIterate(print, every=3)), True)
    assert [every3.next_due(t) for t in (0, 2, 3)] == [3, 3, 6]
    every3.period = NEVER  # muted by its front
    assert every3.next_due(5) == NEVER
    listed = wire.MirrorWatch(sent.append, "b", (NEVER, (2, 10)), False)
    assert [listed.next_due(t) for t in (0, 2, 10)] == [2, 10, NEVER]
    listed.push(4, 0.5, 0.1, None)
    assert sent == [(wire.PUSH, "b", (4, 0.5, 0.1, None))]
