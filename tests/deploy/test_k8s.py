"""deploy/k8s: every kustomization builds (kubectl kustomize) and validates offline against Kubernetes'
schemas with unknown fields refused (kubernetes-validate --strict; CRDs, which it has no schema for, are
checked here by their fields); the manifests agree with the server they run (routes, metric names,
settings)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from eqserve.service.app import create_app
from eqserve.service.config import Settings, env_var
from eqserve.service.metrics import Metrics
from tests.test_prometheus import need

K8S = Path(__file__).resolve().parents[2] / "deploy" / "k8s"
BUILDS = ("", "keda", "gpu")
"""The kustomizations a user applies: the default (HPA), KEDA, GPU."""


def build(name: str) -> list[dict[str, Any]]:
    done = subprocess.run(
        [need("kubectl"), "kustomize", str(K8S / name)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return list(yaml.safe_load_all(done.stdout))


def validate(path: Path) -> subprocess.CompletedProcess[str]:
    tool = Path(sys.executable).parent / "kubernetes-validate"
    if not tool.exists():
        need("kubernetes-validate")
    return subprocess.run([str(tool), "--strict", str(path)], capture_output=True, text=True, timeout=120)


def by_kind(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    kinds = [d["kind"] for d in docs]
    assert len(kinds) == len(set(kinds)), kinds
    return {d["kind"]: d for d in docs}


def container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    (c,) = by_kind(docs)["Deployment"]["spec"]["template"]["spec"]["containers"]
    return c


def env(c: dict[str, Any]) -> dict[str, Any]:
    names = [e["name"] for e in c["env"]]
    assert len(names) == len(set(names)), names
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in c["env"]}


@pytest.mark.parametrize("name", BUILDS)
def test_each_kustomization_builds_and_validates_strictly(name: str, tmp_path: Path) -> None:
    out = tmp_path / "built.yaml"
    out.write_text(yaml.safe_dump_all(build(name)))
    done = validate(out)
    assert done.returncode == 0, done.stdout + done.stderr


def test_strict_validation_refuses_an_unknown_field(tmp_path: Path) -> None:
    docs = build("")
    container(docs)["readinessProbe"]["httpGett"] = {"path": "/readyz", "port": "http"}
    out = tmp_path / "built.yaml"
    out.write_text(yaml.safe_dump_all(docs))
    assert validate(out).returncode != 0


def test_the_deployment_probes_routes_the_server_has_and_waits_for_solves() -> None:
    docs = build("")
    c = container(docs)
    paths = {getattr(r, "path", None) for r in create_app(Settings(models=[])).routes}
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz" in paths
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz" in paths
    assert c["resources"]["requests"] and c["resources"]["limits"]
    e = env(c)
    assert e[env_var("api_key")] == {"secretKeyRef": {"name": "eqserve-api-key", "key": "api-key"}}
    assert set(e) <= {env_var(f) for f in Settings.__dataclass_fields__}
    pod = by_kind(docs)["Deployment"]["spec"]["template"]["spec"]
    # the longest solve a client may ask for, plus the preStop delay, fits in the grace period
    pre_stop = c["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert pod["terminationGracePeriodSeconds"] >= Settings().timeout_cap_s + pre_stop


def test_the_hpa_scales_on_the_waiting_gauge_that_the_adapter_rule_exposes() -> None:
    kinds = by_kind(build(""))
    assert {"Deployment", "Service", "ServiceMonitor", "HorizontalPodAutoscaler", "ConfigMap"} <= set(kinds)
    exposed = Metrics(10).render().decode()
    (metric,) = kinds["HorizontalPodAutoscaler"]["spec"]["metrics"]
    assert kinds["HorizontalPodAutoscaler"]["apiVersion"] == "autoscaling/v2"
    assert metric["type"] == "Pods" and f"# TYPE {metric['pods']['metric']['name']} gauge" in exposed
    (rule,) = yaml.safe_load(kinds["ConfigMap"]["data"]["config.yaml"])["rules"]
    assert rule["name"]["as"] == metric["pods"]["metric"]["name"]
    assert rule["seriesQuery"].startswith(metric["pods"]["metric"]["name"] + "{")
    monitor = kinds["ServiceMonitor"]["spec"]
    assert monitor["selector"]["matchLabels"] == kinds["Service"]["metadata"]["labels"]
    assert monitor["endpoints"][0]["port"] == kinds["Service"]["spec"]["ports"][0]["name"]


def test_keda_scales_the_same_deployment_on_the_same_gauge_without_an_hpa() -> None:
    kinds = by_kind(build("keda"))
    assert "HorizontalPodAutoscaler" not in kinds
    scaled = kinds["ScaledObject"]["spec"]
    assert scaled["scaleTargetRef"]["name"] == kinds["Deployment"]["metadata"]["name"]
    (trigger,) = scaled["triggers"]
    assert trigger["type"] == "prometheus" and "eqserve_requests_waiting" in trigger["metadata"]["query"]


def test_the_gpu_variant_asks_for_a_gpu_and_serves_on_cuda() -> None:
    c = container(build("gpu"))
    assert c["resources"]["limits"]["nvidia.com/gpu"] == "1"
    e = env(c)
    assert e[env_var("device")] == "cuda"
    Settings(models=[], device=e[env_var("device")], max_batch_rows=int(e[env_var("max_batch_rows")]))
