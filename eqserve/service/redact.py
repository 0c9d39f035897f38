"""Secrets out of the log: the WebSocket's `?token=KEY` would otherwise appear in every access line."""

from __future__ import annotations

import logging
import re
from typing import Any

SECRET_PARAM = re.compile(r"([?&]token=)[^&\s\"]*", re.IGNORECASE)
"""The query parameter that carries the API key (the live page's WebSocket), up to its end."""


def redact(text: str) -> str:
    """`text` with the values of secret query parameters replaced."""
    return SECRET_PARAM.sub(r"\1[redacted]", text)


class RedactSecrets(logging.Filter):
    """A handler filter that redacts secret query parameters in a record's message and arguments."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Redact in place; never drops the record."""
        if isinstance(record.msg, str):
            record.msg = redact(record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(_redact_arg(a) for a in record.args)
        return True


def _redact_arg(arg: Any) -> Any:
    return redact(arg) if isinstance(arg, str) else arg


def log_config(base: dict[str, Any]) -> dict[str, Any]:
    """uvicorn's logging config `base` with every handler filtered through `RedactSecrets`."""
    handlers = {
        name: {**handler, "filters": [*handler.get("filters", []), "redact_secrets"]}
        for name, handler in base["handlers"].items()
    }
    filters = {**base.get("filters", {}), "redact_secrets": {"()": RedactSecrets}}
    return {**base, "filters": filters, "handlers": handlers}
