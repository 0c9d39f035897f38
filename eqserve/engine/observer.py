"""What an engine tells the outside (metrics) as it works."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from eqserve.engine.completion import CompletionJob
    from eqserve.engine.job import SolveJob, SolveResult


class EngineObserver(Protocol):
    """Receives the engine's events; called on the worker thread, so it must be quick."""

    def admitted(self, job: SolveJob, wait_s: float) -> None: ...
    def first_iterate(self, job: SolveJob, since_submit_s: float) -> None: ...
    def ran(self, seconds: float, steps: int, rows: int, row_steps: int) -> None: ...
    def finished(self, job: SolveJob, result: SolveResult) -> None: ...
    def token(self, job: CompletionJob, iterations: int, by_rule: bool) -> None: ...
    def lost(self, job: SolveJob | CompletionJob, started: bool) -> None: ...


class NullObserver:
    """Ignores every event."""

    def admitted(self, job: SolveJob, wait_s: float) -> None:
        """Nothing."""

    def first_iterate(self, job: SolveJob, since_submit_s: float) -> None:
        """Nothing."""

    def ran(self, seconds: float, steps: int, rows: int, row_steps: int) -> None:
        """Nothing: a run of `steps` steps over `rows` slots, `row_steps` of them requests' iterations."""

    def finished(self, job: SolveJob, result: SolveResult) -> None:
        """Nothing."""

    def token(self, job: CompletionJob, iterations: int, by_rule: bool) -> None:
        """Nothing: a looped LM decided a token after `iterations` inner steps (stopped by its exit
        rule, or by its budget)."""

    def lost(self, job: SolveJob | CompletionJob, started: bool) -> None:
        """Nothing: the engine process died with `job` unanswered (told by the front's client, as the
        process that would have finished it is gone)."""
