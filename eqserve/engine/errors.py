"""Why an engine refuses or fails a solve."""

from __future__ import annotations


class _Portable(Exception):
    """An engine error that pickles by its message and attributes: an engine process sends it to the
    front, and its constructor's arguments (a cause that may not pickle) are gone by then."""

    def __reduce__(self) -> tuple:
        return _rebuilt, (type(self), str(self), self.__dict__)


def _rebuilt(cls: type[Exception], message: str, attrs: dict) -> Exception:
    err = cls.__new__(cls)
    Exception.__init__(err, message)
    err.__dict__.update(attrs)
    return err


class QueueFull(_Portable):
    """The waiting queue is at its bound; the client should retry after `retry_after` s."""

    def __init__(self, model: str, retry_after: float) -> None:
        super().__init__(f"model {model!r} has too many waiting requests")
        self.retry_after = retry_after


class EngineClosed(_Portable):
    """The model is being unloaded or replaced: its engine takes no new solves."""

    def __init__(self, model: str) -> None:
        super().__init__(f"model {model!r} is being unloaded")


class ModelStepError(_Portable):
    """The model raised inside its step; every request of that run fails with this."""

    def __init__(self, model: str, cause: BaseException) -> None:
        super().__init__(f"model {model!r} failed in its step: {type(cause).__name__}: {cause}")
        self.model = model


class EngineDied(_Portable):
    """The model's engine process exited (killed, crashed, or restarted past its memory bound) with this
    request in flight, or is being restarted as it arrives; `started`: whether its solve had begun (one
    that had not may be retried at once)."""

    def __init__(self, model: str, started: bool) -> None:
        what = "exited during this request" if started else "is restarting"
        super().__init__(f"the engine process of model {model!r} {what}")
        self.model, self.started = model, started
