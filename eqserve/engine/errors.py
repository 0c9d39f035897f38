"""Why an engine refuses or fails a solve."""

from __future__ import annotations


class QueueFull(Exception):
    """The waiting queue is at its bound; the client should retry after `retry_after` s."""

    def __init__(self, model: str, retry_after: float) -> None:
        super().__init__(f"model {model!r} has too many waiting requests")
        self.retry_after = retry_after


class EngineClosed(Exception):
    """The model is being unloaded or replaced: its engine takes no new solves."""

    def __init__(self, model: str) -> None:
        super().__init__(f"model {model!r} is being unloaded")


class ModelStepError(Exception):
    """The model raised inside its step; every request of that run fails with this."""

    def __init__(self, model: str, cause: BaseException) -> None:
        super().__init__(f"model {model!r} failed in its step: {type(cause).__name__}: {cause}")
        self.model = model
