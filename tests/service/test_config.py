"""Settings: flags over EQSERVE_* variables over defaults, and refusal of bad values."""

from __future__ import annotations

import argparse

import pytest

from eqserve.service import config


def _args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    config.add_arguments(p)
    return p.parse_args(argv)


def test_flags_override_environment_override_defaults() -> None:
    env = {"EQSERVE_PORT": "9001", "EQSERVE_MAX_QUEUE": "7", "EQSERVE_MODELS": "reciprocal"}
    s = config.load(_args(["--port", "9002", "--timeout-cap-s", "1.5"]), env)
    assert s.port == 9002
    assert s.max_queue == 7
    assert s.models == ["reciprocal"]
    assert s.timeout_cap_s == 1.5
    assert s.max_batch_rows == config.Settings().max_batch_rows


def test_every_setting_has_a_flag_and_a_variable() -> None:
    p = argparse.ArgumentParser()
    config.add_arguments(p)
    text = p.format_help()
    for name in config.Settings.__dataclass_fields__:
        assert f"--{name.replace('_', '-')}" in text
        assert config.env_var(name) in text


@pytest.mark.parametrize(
    ("env", "match"),
    [
        ({"EQSERVE_MODELS": "nope"}, "unknown model"),
        ({"EQSERVE_BATCHING": "lazy"}, "batching"),
        ({"EQSERVE_MAX_BATCH_ROWS": "0"}, "max_batch_rows"),
    ],
)
def test_bad_settings_are_refused(env: dict[str, str], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        config.load(None, env)
