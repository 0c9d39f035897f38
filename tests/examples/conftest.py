"""Tests that start `eqserve` or Python processes are marked `slow` (deselect with -m "not slow")."""

from __future__ import annotations

import pytest


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "slow: starts eqserve processes (seconds each)")
