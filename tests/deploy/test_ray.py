"""deploy/ray for real: a local Ray cluster, in its own network namespace (Ray binds a replica's gRPC
server on all interfaces; tests bind loopback only), serves eqserve with 2 replicas; solves spread over
both, SSE and a cancelled WebSocket stream go through Serve's proxy, each replica's own /metrics is found
through the SD files, and nothing is left running afterwards."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def processes_naming(text: str) -> list[int]:
    """Pids of the processes whose command line contains `text`."""
    pids = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if text.encode() in cmdline.read_bytes():
                pids.append(int(cmdline.parent.name))
        except OSError:
            continue
    return pids


def need_ray() -> None:
    """Ray (the ray extra) and unshare/ip; fail under CI=true (setup.sh --test installs them), else skip."""
    missing = [p for p in ("unshare", "ip") if shutil.which(p) is None]
    try:
        import ray.serve  # noqa: F401
    except ImportError:
        missing.append("ray[serve] (pip install -e '.[ray]')")
    if missing:
        message = f"{', '.join(missing)} missing (./scripts/setup.sh --test installs them)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)


def test_two_replicas_share_solves_streams_and_metrics_and_shut_down_clean(tmp_path: Path) -> None:
    need_ray()
    sd = tmp_path / "sd"
    temp = Path(tempfile.mkdtemp(prefix="ray-", dir="/tmp"))  # Ray's socket paths must stay short
    env = os.environ | {
        "PYTHONPATH": str(ROOT),
        "EQSERVE_MODELS": "reciprocal",
        "EQSERVE_MAX_ITERS_CAP": str(10**7),  # the cancelled stream runs until its cancel
        "EQSERVE_METRICS_SD_DIR": str(sd),
        "RAY_USAGE_STATS_ENABLED": "0",
    }
    script = f"ip link set lo up && exec {sys.executable} -m tests.deploy.ray_driver {temp} {sd} 8000"
    try:
        done = subprocess.run(
            ["unshare", "-n", "bash", "-c", script], cwd=ROOT, env=env, capture_output=True, text=True,
            timeout=240,
        )  # fmt: skip
    finally:
        shutil.rmtree(temp, ignore_errors=True)
    lines = [x for x in done.stdout.splitlines() if x.startswith("RESULT ")]
    assert done.returncode == 0 and lines, done.stdout[-3000:] + done.stderr[-3000:]
    seen = json.loads(lines[-1].removeprefix("RESULT "))
    assert seen["codes"] == [200] * 40
    assert seen["sse"][-1] == "result" and seen["sse"].count("iterate") == 7
    assert seen["ws"][0] == "iterate" and seen["ws"][-1] == "result" and seen["ws_status"] == "cancelled"
    per_replica = seen["per_replica"]
    assert len(per_replica) == 2 and all(n > 0 for n in per_replica.values()), per_replica
    assert sum(per_replica.values()) == 40 + 1 + 1  # the solves, the SSE stream, the WebSocket stream
    assert seen["sd_left"] == []
    assert processes_naming(str(temp)) == []
