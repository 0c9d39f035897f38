"""Run inside its own network namespace by test_ray.py: a local Ray cluster serving deploy/ray's app with 2
replicas, driven over loopback; prints what it saw as JSON (the test asserts on it)."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import httpx
import ray
from ray import serve

from eqserve.service.client import Client, solve_body


def scrape(target: str) -> float:
    """Finished solves of reciprocal on one replica's own /metrics."""
    text = httpx.get(f"http://{target}/metrics").text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith('eqserve_requests_total{model="reciprocal"')
    )


def main(temp_dir: str, sd_dir: str, port: int) -> None:
    ray.init(_temp_dir=temp_dir, include_dashboard=False, num_cpus=4, _node_ip_address="127.0.0.1")
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    from deploy.ray.app import Eqserve

    two = Eqserve.options(num_replicas=2, autoscaling_config=None)
    serve.run(two.bind(), name="eqserve", route_prefix="/")
    url, seen = f"http://127.0.0.1:{port}", {}
    body = {"model": "reciprocal", "input": {"x": [0.5]}, "budget": {"max_iters": 5, "tol": 0}}
    with httpx.Client(base_url=url, timeout=60) as client:
        codes = [client.post("/v1/solve", json=body).status_code for _ in range(40)]
        sse_body = solve_body("reciprocal", {"x": [0.5]}, max_iters=7, tol=0) | {"stream": True}
        sse = client.post("/v1/solve", json=sse_body)
        events = [json.loads(line[5:]) for line in sse.text.splitlines() if line.startswith("data:")]
        seen["sse"] = [e["type"] for e in events]
    with Client(url) as c, c.stream("reciprocal", {"x": [1e-6]}, max_iters=10**7, tol=0) as stream:
        types = []
        for event in stream:
            types.append(event["type"])
            if event["type"] == "iterate":
                stream.cancel()
        seen["ws"] = types
        seen["ws_status"] = stream.result["status"] if stream.result else None
    entries = [e for f in Path(sd_dir).glob("*.json") for e in json.loads(f.read_text())]
    targets = [t for e in entries for t in e["targets"]]
    seen |= {"codes": codes, "per_replica": {t: scrape(t) for t in targets}}
    serve.shutdown()
    ray.shutdown()
    time.sleep(1)
    seen["sd_left"] = [f.name for f in Path(sd_dir).glob("*.json")]
    print("RESULT " + json.dumps(seen), flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
