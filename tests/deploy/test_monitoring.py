"""deploy/prometheus and deploy/grafana against the real things: a real Prometheus, loaded with the
deploy config and alert rules, scrapes a real eqserve that served every status, 4xx, 429 and streams;
every dashboard query and every alert expression must then return data. promtool checks the config and
runs the rules' unit tests; the dashboard round-trips through grafana-foundation-sdk's model."""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
import yaml

from deploy.grafana import dashboard
from deploy.grafana.preview import render
from eqserve.models.base import Ctx
from eqserve.service.app import create_app
from eqserve.service.client import Client, solve_body
from eqserve.service.config import Settings
from tests.fake_models import BLOWUP_X, RAISE_X, Faulty
from tests.live_server import live_server
from tests.looped_models import CountLM
from tests.test_prometheus import need, run_prometheus, wait_for

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
PROM_DIR = DEPLOY / "prometheus"
MODEL = "faulty"
LM = "count-lm"
SELECTED = f"{MODEL}|{LM}"
"""The dashboard's `model` variable as the queries are run: both models (the looped LM's panels)."""
STATUSES = ("converged", "max_iters", "deadline", "diverged", "cancelled", "error")
RATE_INTERVAL = "1m"
"""Wide enough to cover all the traffic, so every rate() and quantile has samples."""
LONG = 10**9
"""An iteration budget no solve reaches."""
HOLD_X = 1.1
FOREVER = [HOLD_X]


class Served(Faulty):
    """Faulty, and rows holding HOLD_X oscillate (y ← 1 − y), never converging nor diverging: a solve of
    them with budget LONG runs until its deadline or a cancel."""

    def step(self, y: torch.Tensor, ctx: Ctx) -> torch.Tensor:
        hold = (ctx["x"] == HOLD_X).any(1, keepdim=True)
        return torch.where(hold, 1 - y, super().step(y, ctx))


@dataclass
class Run:
    """A server that served the traffic and the Prometheus that scraped it."""

    url: str
    prom: str
    start: float
    statuses: Counter[str]
    http_codes: Counter[int]


def _solve(client: httpx.Client, x: list[float], **budget: Any) -> httpx.Response:
    return client.post("/v1/solve", json={"model": MODEL, "input": {"x": x}, "budget": budget})


def send_traffic(url: str) -> tuple[Counter[str], Counter[int]]:
    """Requests that end in every status, a 422, 429s, an SSE stream and a cancelled WebSocket stream;
    the statuses and HTTP codes seen."""
    statuses: Counter[str] = Counter()
    codes: Counter[int] = Counter()

    def record(r: httpx.Response) -> None:
        codes[r.status_code] += 1
        if r.status_code == 200:
            statuses[r.json()["status"]] += 1
        elif r.status_code == 500:  # the model failed in its step
            statuses["error"] += 1

    with httpx.Client(base_url=url, timeout=60) as client:
        for _ in range(3):
            record(_solve(client, [0.5, 0.25], tol=1e-8))
        record(_solve(client, [0.5], max_iters=3, tol=0))
        record(_solve(client, [BLOWUP_X], max_iters=1000, tol=0))
        record(_solve(client, [RAISE_X]))  # the step raises: 500, status error
        codes[client.post("/v1/solve", json={"model": MODEL, "input": {"x": "oops"}}).status_code] += 1
        body = solve_body(MODEL, {"x": [0.5]}, max_iters=20, tol=0) | {"stream": True}
        sse = client.post("/v1/solve", json=body).text
        events = [json.loads(line[5:]) for line in sse.splitlines() if line.startswith("data:")]
        statuses[events[-1]["status"]] += 1
        # 2 rows, a queue of 1: of six concurrent solves two run, one waits, the rest get 429
        with ThreadPoolExecutor(6) as pool:
            budget = {"max_iters": LONG, "tol": 0, "timeout_s": 2}
            held = [pool.submit(_solve, client, FOREVER, **budget) for _ in range(6)]
            for r in held:
                record(r.result())
    with Client(url) as c, c.stream(MODEL, {"x": FOREVER}, max_iters=LONG, tol=0) as stream:
        for event in stream:
            if event["type"] == "iterate":
                stream.cancel()
        assert stream.result is not None
        statuses[stream.result["status"]] += 1
    with Client(url) as c:  # a looped LM's tokens: some stopped by their exit rule, some by the budget
        for criterion in ("latent-diff", "none"):
            done = c.complete(LM, "3", max_tokens=4, max_iters=30, criterion=criterion, threshold=1e-3)
            codes[200] += 1
            assert done["usage"]["completion_tokens"] == 4
    return statuses, codes


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    """The deploy Prometheus config (scrape target and intervals made local) scraping a served eqserve."""
    need("prometheus")
    tmp = tmp_path_factory.mktemp("monitoring")
    settings = Settings(models=[], max_batch_rows=2, max_queue=1, max_iters_cap=LONG)
    with live_server(create_app(settings, {MODEL: Served(), LM: CountLM()})) as url:
        config = yaml.safe_load((PROM_DIR / "prometheus.yml").read_text())
        config["global"] = {"scrape_interval": "500ms", "evaluation_interval": "500ms"}
        config["rule_files"] = [str(PROM_DIR / "alerts.yml")]
        config["scrape_configs"][0]["static_configs"] = [{"targets": [url.removeprefix("http://")]}]
        (tmp / "prometheus.yml").write_text(yaml.safe_dump(config))
        with run_prometheus(tmp / "prometheus.yml", tmp) as prom:
            # a scrape before the traffic, which finds every status at zero (rate() needs that sample)
            wait_for(prom, f'count(eqserve_requests_total{{model="{MODEL}"}} == 0)', float(len(STATUSES)))
            start = time.time()
            statuses, codes = send_traffic(url)
            total = float(sum(statuses.values()))
            wait_for(prom, f'sum(eqserve_requests_total{{model="{MODEL}"}})', total, timeout=60)
            # two scrapes of every series after the traffic: each rate() has its two samples
            wait_for(prom, f'sum(eqserve_requests_total{{model="{LM}"}})', 2.0, timeout=60)
            samples = f'min(count_over_time(eqserve_requests_total{{model=~"{SELECTED}"}}[1m]))'
            wait_for(prom, f"{samples} >= bool 2", 1.0)
            # and of the looped LM's token series, which appear with its first token
            tokens = f'min(count_over_time(eqserve_token_exits_total{{model="{LM}"}}[1m]))'
            wait_for(prom, f"{tokens} >= bool 2", 1.0)
            yield Run(url, prom, start, statuses, codes)


def instant(prom: str, promql: str) -> list[dict]:
    body = httpx.get(f"{prom}/api/v1/query", params={"query": promql}).json()
    assert body["status"] == "success", (promql, body)
    return body["data"]["result"]


def assert_finite_data(prom: str, promql: str) -> None:
    result = instant(prom, promql)
    assert result, f"no data: {promql}"
    values = [float(s["value"][1]) for s in result]
    assert all(math.isfinite(v) for v in values), f"{promql}: {values}"


def test_the_traffic_produced_every_status_a_4xx_and_429s(run: Run) -> None:
    assert set(run.statuses) == set(STATUSES), run.statuses
    assert run.http_codes[422] == 1 and run.http_codes[429] >= 1, run.http_codes
    for status in STATUSES:
        assert_finite_data(run.prom, f'eqserve_requests_total{{model="{MODEL}",status="{status}"}} > 0')


@pytest.mark.parametrize("expr", [e for p in dashboard.PANELS for e, _ in p.targets])
def test_every_dashboard_query_returns_finite_data(run: Run, expr: str) -> None:
    assert_finite_data(run.prom, dashboard.substitute(expr, SELECTED, "eqserve", RATE_INTERVAL))


def test_the_convergence_share_counts_solves_only(run: Run) -> None:
    """With every model selected, the share is the solving model's own: the looped LM's completions
    (status ok) are left out of the denominator."""
    (panel,) = [p for p in dashboard.PANELS if p.title == "Convergence share"]
    at = str(time.time())
    shares = []
    for selected, expr in ((SELECTED, panel.targets[0][0]), (MODEL, panel.targets[0][0])):
        promql = dashboard.substitute(expr, selected, "eqserve", RATE_INTERVAL)
        body = httpx.get(f"{run.prom}/api/v1/query", params={"query": promql, "time": at}).json()
        shares.append(float(body["data"]["result"][0]["value"][1]))
    assert 0 < shares[1] < 1 and shares[0] == pytest.approx(shares[1], rel=1e-9), shares


def test_the_dashboard_variables_find_the_model_and_job(run: Run) -> None:
    for var in dashboard.VARIABLES:
        if var["type"] != "query":
            continue
        metric, label = re.fullmatch(r"label_values\((\w+), (\w+)\)", var["query"]["query"]).groups()
        body = httpx.get(f"{run.prom}/api/v1/label/{label}/values", params={"match[]": metric}).json()
        assert {"model": MODEL, "job": "eqserve"}[label] in body["data"]


def alert_rules() -> list[dict]:
    return [r for g in yaml.safe_load((PROM_DIR / "alerts.yml").read_text())["groups"] for r in g["rules"]]


THRESHOLD = re.compile(r"\s*(==|!=|>=|<=|>|<)\s*[-+0-9.e]+\s*$")


@pytest.mark.parametrize("rule", alert_rules(), ids=lambda r: r["alert"])
def test_every_alert_expression_without_its_threshold_returns_finite_data(run: Run, rule: dict) -> None:
    query, n = THRESHOLD.subn("", rule["expr"])
    assert n == 1, f"{rule['alert']}: expected '<query> <comparison> <number>'"
    assert_finite_data(run.prom, query)
    for key in ("summary", "description"):
        assert len(rule["annotations"][key]) > 20, (rule["alert"], key)


def test_prometheus_loaded_every_alert_rule_and_evaluates_it_without_error(run: Run) -> None:
    def rules() -> dict[str, dict]:
        groups = httpx.get(f"{run.prom}/api/v1/rules").json()["data"]["groups"]
        return {r["name"]: r for g in groups for r in g["rules"]}

    assert set(rules()) == {r["alert"] for r in alert_rules()}
    # the traffic had a diverged solve and an error: those alerts fire at once (they have no `for`)
    firing = 'ALERTS{alertname=~"EqserveDiverged|EqserveSolveErrors",alertstate="firing"}'
    wait_for(run.prom, f"count({firing})", 2)
    assert all(r["health"] == "ok" and not r.get("lastError") for r in rules().values()), rules()


def test_the_preview_draws_every_panel_from_prometheus(run: Run, tmp_path: Path) -> None:
    out = tmp_path / "preview.png"
    drawn = render(run.prom, out, run.start - 5, time.time(), SELECTED, scrape_s=0.5)
    assert set(drawn) == {p.title for p in dashboard.PANELS}
    assert all(n > 0 for n in drawn.values()), drawn
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([need("promtool"), *args], capture_output=True, text=True, timeout=60)


def test_promtool_checks_the_config_and_rules_and_runs_the_rule_tests() -> None:
    for args in (
        ("check", "config", str(PROM_DIR / "prometheus.yml")),
        ("check", "rules", str(PROM_DIR / "alerts.yml")),
        ("test", "rules", str(PROM_DIR / "alerts_test.yml")),
    ):
        done = promtool(*args)
        assert done.returncode == 0, done.stdout + done.stderr


def test_a_wrong_expectation_in_the_rule_tests_fails(tmp_path: Path) -> None:
    shutil.copy(PROM_DIR / "alerts.yml", tmp_path / "alerts.yml")
    text = (PROM_DIR / "alerts_test.yml").read_text()
    wrong = text.replace("summary: 'busy: 100 requests waiting", "summary: 'busy: 99 requests waiting")
    assert wrong != text
    (tmp_path / "alerts_test.yml").write_text(wrong)
    done = promtool("test", "rules", str(tmp_path / "alerts_test.yml"))
    assert done.returncode != 0 and "EqserveQueueBacklog" in done.stdout + done.stderr


def test_the_dashboard_file_is_what_the_generator_writes() -> None:
    assert dashboard.OUT.read_text() == dashboard.render(), "run: python -m deploy.grafana.dashboard"


def _lost(original: Any, parsed: Any, path: str = "") -> list[str]:
    """Keys and values of `original` that the parsed model dropped or changed."""
    if isinstance(original, dict):
        if not isinstance(parsed, dict):
            return [path]
        return [p for k, v in original.items() for p in ([f"{path}.{k}"] if k not in parsed else
                _lost(v, parsed[k], f"{path}.{k}"))]  # fmt: skip
    if isinstance(original, list):
        if not isinstance(parsed, list) or len(parsed) != len(original):
            return [path]
        pairs = enumerate(zip(original, parsed, strict=True))
        return [p for i, (a, b) in pairs for p in _lost(a, b, f"{path}[{i}]")]
    return [] if original == parsed else [path]


def roundtrip(data: dict) -> dict:
    """`data` parsed into grafana-foundation-sdk's Dashboard model and written back."""
    try:
        from grafana_foundation_sdk.cog.encoder import JSONEncoder
        from grafana_foundation_sdk.cog.plugins import register_default_plugins
        from grafana_foundation_sdk.models.dashboard import Dashboard
    except ImportError:
        need("grafana-foundation-sdk (pip)")
        raise
    register_default_plugins()
    return json.loads(json.dumps(Dashboard.from_json(data), cls=JSONEncoder))


def test_the_dashboard_round_trips_through_grafanas_model_and_unknown_keys_fail() -> None:
    data = json.loads(dashboard.OUT.read_text())
    assert _lost(data, roundtrip(data)) == []
    data["panels"][1]["fieldConfig"]["defaults"]["unitt"] = "s"
    data["panels"][1]["options"]["legend"]["placment"] = "bottom"
    assert set(_lost(data, roundtrip(data))) == {
        ".panels[1].options.legend.placment",
        ".panels[1].fieldConfig.defaults.unitt",
    }


def test_every_panel_queries_the_datasource_variable_and_uses_only_defined_variables() -> None:
    data = json.loads(dashboard.OUT.read_text())
    defined = {v["name"] for v in data["templating"]["list"]} | {"__rate_interval"}
    panels = [p for p in data["panels"] if p["type"] != "row"]
    assert len(panels) == len(dashboard.PANELS)
    for p in panels:
        assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        for t in p["targets"]:
            assert set(re.findall(r"\$(\w+)", t["expr"])) <= defined, t["expr"]
            assert 'model=~"$model"' in t["expr"] or "$job" in t["expr"], t["expr"]


def test_the_compose_file_validates_against_the_compose_spec_and_publishes_on_loopback_only() -> None:
    compose = DEPLOY / "docker-compose.yaml"
    done = subprocess.run(
        [sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec", str(compose)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    spec = yaml.safe_load(compose.read_text())
    for name, service in spec["services"].items():
        for port in service.get("ports", []):
            assert port.startswith("127.0.0.1:"), (name, port)
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (DEPLOY / source).exists(), (name, source)
    build = spec["services"]["eqserve"]["build"]
    assert (DEPLOY / build["context"] / build["dockerfile"]).is_file()
