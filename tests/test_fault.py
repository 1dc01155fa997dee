"""The fault policy: aborts, delays, header-controlled faults, maxActiveFaults, validation.

One gateway (one worker) serves every scenario, each on its own path prefix
with its own pipeline, in front of one real backend.
"""

from __future__ import annotations

import asyncio
import random
import textwrap
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from meshgate.config.loader import ConfigError, parse_gateway
from meshgate.policies import BuildContext
from meshgate.policies.fault import Fault, FaultParams, _chosen
from meshgate.protocol.exchange import Exchange
from tests.conftest import Backend
from tests.support.gateway import Gateway

SCENARIOS: dict[str, dict[str, Any]] = {
    "abort": {"abort": {"httpStatus": 503}},
    "half": {"abort": {"httpStatus": 500, "percentage": 50}},
    "grpc": {"abort": {"grpcStatus": 14}},
    "delay": {"delay": {"fixedDelay": 200}},
    "both": {"delay": {"fixedDelay": 100}, "abort": {"httpStatus": 429}},
    "header": {"delay": {"headerControlled": True},
               "abort": {"headerControlled": True}},
    "header10": {"abort": {"headerControlled": True, "percentage": 10}},
    "capped": {"delay": {"fixedDelay": 400}, "maxActiveFaults": 1},
    "never": {"delay": {"fixedDelay": 5000, "percentage": 0},
              "abort": {"httpStatus": 500, "percentage": 0}},
}


def fault_config(upstream: str) -> dict[str, Any]:
    api: dict[str, Any] = {}
    pipelines: dict[str, Any] = {}
    for name, action in SCENARIOS.items():
        api[name] = {"host": "*", "paths": [f"/{name}", f"/{name}/*"]}
        pipelines[name] = {"apiEndpoints": [name], "policies": [
            {"fault": [{"action": action}]},
            {"proxy": [{"action": {"serviceEndpoint": "backend"}}]}]}
    api["plain"] = {"host": "*", "paths": ["/plain", "/plain/*"]}
    pipelines["plain"] = {"apiEndpoints": ["plain"], "policies": [
        {"proxy": [{"action": {"serviceEndpoint": "backend"}}]}]}
    return {"apiEndpoints": api, "serviceEndpoints": {"backend": {"url": upstream}},
            "policies": ["fault", "proxy"], "pipelines": pipelines}


@pytest.fixture(scope="module")
def gw(backend_mod: Backend, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    gateway = Gateway(tmp_path_factory.mktemp("fault"), fault_config(backend_mod.url))
    yield gateway
    gateway.stop()


@pytest.fixture
def client(gw: Gateway) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=gw.url, timeout=10) as c:
        yield c


def timed(client: httpx.Client, path: str, **headers: str) -> tuple[httpx.Response, float]:
    started = time.monotonic()
    r = client.get(path, headers=headers)
    return r, time.monotonic() - started


# -- aborts ----------------------------------------------------------------------------


def test_abort_all(client: httpx.Client) -> None:
    for _ in range(5):
        r = client.get("/abort/x")
        assert r.status_code == 503
        assert r.text == "fault filter abort"
    assert client.get("/plain/x").text == "ok backend\n"


def test_abort_half_lands_in_a_band(client: httpx.Client) -> None:
    statuses = [client.get("/half").status_code for _ in range(400)]
    aborted = statuses.count(500)
    assert aborted + statuses.count(200) == 400
    assert 140 <= aborted <= 260       # mean 200, sd 10: a 6-sigma band


def test_grpc_abort_is_trailers_only_style(client: httpx.Client) -> None:
    r = client.post("/grpc/pkg.Svc/Call", content=b"\x00\x00\x00\x00\x00",
                    headers={"content-type": "application/grpc"})
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/grpc"
    assert r.headers["grpc-status"] == "14"
    assert r.headers["grpc-message"] == "fault filter abort"
    assert r.content == b""


def test_zero_percent_never_faults(client: httpx.Client) -> None:
    for _ in range(20):
        r, elapsed = timed(client, "/never")
        assert r.status_code == 200 and elapsed < 1


# -- delays ----------------------------------------------------------------------------


def test_delay_adds_latency_without_blocking_the_worker(gw: Gateway) -> None:
    async def scenario() -> tuple[float, float, int, int]:
        async with httpx.AsyncClient(base_url=gw.url, timeout=10) as c:
            async def one(path: str) -> tuple[float, int]:
                started = time.monotonic()
                r = await c.get(path)
                return time.monotonic() - started, r.status_code

            delayed = asyncio.create_task(one("/delay/x"))
            await asyncio.sleep(0.02)      # let the delayed request reach the worker first
            (fast, fast_status) = await one("/plain/x")
            assert not delayed.done()      # answered while the other was still held
            slow, slow_status = await delayed
            return slow, fast, slow_status, fast_status

    slow, fast, slow_status, fast_status = asyncio.run(scenario())
    assert slow_status == fast_status == 200
    assert slow >= 0.2
    assert fast < 0.15


def test_delay_then_abort(client: httpx.Client) -> None:
    r, elapsed = timed(client, "/both")
    assert r.status_code == 429 and r.text == "fault filter abort"
    assert elapsed >= 0.1


# -- header-controlled faults ----------------------------------------------------------------


def test_header_controlled_faults(client: httpx.Client) -> None:
    r, elapsed = timed(client, "/header")
    assert r.status_code == 200 and elapsed < 0.5          # no headers: no fault
    r, elapsed = timed(client, "/header", **{"x-envoy-fault-delay-request": "120"})
    assert r.status_code == 200 and elapsed >= 0.12
    r = client.get("/header", headers={"x-envoy-fault-abort-request": "418"})
    assert r.status_code == 418 and r.text == "fault filter abort"
    r = client.get("/header", headers={"x-envoy-fault-abort-grpc-request": "8"})
    assert r.status_code == 200 and r.headers["grpc-status"] == "8"
    r = client.get("/header", headers={"x-envoy-fault-abort-request": "502",
                                       "x-envoy-fault-abort-grpc-request": "8"})
    assert r.status_code == 502 and "grpc-status" not in r.headers   # HTTP status wins
    r = client.get("/header", headers={"x-meshgate-fault-abort-request": "504"})
    assert r.status_code == 200                      # x-meshgate-* from a client: dropped
    r, elapsed = timed(client, "/header", **{"x-envoy-fault-delay-request": "100",
                                             "x-envoy-fault-abort-request": "503"})
    assert r.status_code == 503 and elapsed >= 0.1                     # both
    for bad in ("abc", "99", "600", "-1"):
        r = client.get("/header", headers={"x-envoy-fault-abort-request": bad})
        assert r.status_code == 200, bad                               # malformed: ignored
    r, elapsed = timed(client, "/header", **{"x-envoy-fault-delay-request": "soon"})
    assert r.status_code == 200 and elapsed < 0.5


def test_header_controlled_faults_need_header_control(client: httpx.Client) -> None:
    r = client.get("/abort", headers={"x-envoy-fault-abort-request": "418"})
    assert r.status_code == 503                   # a fixed abort ignores the headers
    r = client.get("/plain", headers={"x-envoy-fault-abort-request": "418"})
    assert r.status_code == 200                   # no fault policy, no fault


def test_header_percentage(client: httpx.Client) -> None:
    def share(path: str, pct: str, n: int = 400) -> int:
        headers = {"x-envoy-fault-abort-request": "503",
                   "x-envoy-fault-abort-request-percentage": pct}
        return sum(client.get(path, headers=headers).status_code == 503 for _ in range(n))

    assert 140 <= share("/header", "50") <= 260
    assert share("/header", "0", 50) == 0
    # the header cannot raise the configured percentage (10%): mean 40, sd 6
    assert 10 <= share("/header10", "100") <= 80


# -- maxActiveFaults -------------------------------------------------------------------------


def test_max_active_faults_caps_concurrent_delays(gw: Gateway) -> None:
    async def scenario() -> list[float]:
        async with httpx.AsyncClient(base_url=gw.url, timeout=10) as c:
            async def one() -> float:
                started = time.monotonic()
                r = await c.get("/capped")
                assert r.status_code == 200
                return time.monotonic() - started

            first = asyncio.create_task(one())
            await asyncio.sleep(0.05)          # the first is being delayed by now
            second = await one()
            durations = [await first, second]
            durations.append(await one())      # the cap is free again: delayed
            return durations

    overflows = metric(gw, "meshgate_faults_overflow_total")
    first, second, third = asyncio.run(scenario())
    assert metric(gw, "meshgate_faults_overflow_total") == overflows + 1
    assert first >= 0.4
    assert second < 0.35                       # overflow: no fault injected
    assert third >= 0.4


# -- in-process checks: hot path and precision --------------------------------------------------


def _exchange(*headers: tuple[bytes, bytes]) -> Exchange:
    return Exchange(None, b"GET", b"/", list(headers), b"h", b"http",  # type: ignore[arg-type]
                    b"127.0.0.1", b"1.1", False, 0.0)


def _action(raw: dict[str, Any]) -> Fault:
    return Fault(FaultParams.model_validate(raw), BuildContext({}, None, "p", []))


def test_no_coroutine_unless_a_delay_is_chosen() -> None:
    never = _action({"delay": {"fixedDelay": 100, "percentage": 0}})
    assert all(never(_exchange()) is None for _ in range(100))
    by_header = _action({"delay": {"headerControlled": True}})
    assert by_header(_exchange((b"x-other", b"1"))) is None
    always = _action({"delay": {"fixedDelay": 100}})
    outcome = always(_exchange())
    assert asyncio.iscoroutine(outcome)
    outcome.close()


def test_fractional_percentages() -> None:
    random.seed(7)
    hits = sum(_chosen(0.1, None) for _ in range(200_000))
    assert 140 <= hits <= 260               # 0.1% of 200k: mean 200, sd 14
    assert not any(_chosen(0.0, None) for _ in range(10_000))
    assert all(_chosen(100.0, None) for _ in range(10_000))
    assert sum(_chosen(100.0, b"0.5") for _ in range(200_000)) in range(800, 1200)
    assert all(_chosen(100.0, b"nan") for _ in range(100))      # malformed: ignored


def metric(gw: Gateway, series: str) -> float:
    for line in gw.metrics().splitlines():
        if line.startswith(series + " "):
            return float(line.split()[-1])
    return 0.0


def test_faults_are_counted(client: httpx.Client, gw: Gateway) -> None:
    aborts = 'meshgate_faults_injected_total{kind="abort"}'
    delays = 'meshgate_faults_injected_total{kind="delay"}'
    before = metric(gw, aborts), metric(gw, delays)
    for _ in range(3):
        assert client.get("/abort").status_code == 503
    assert client.get("/header", headers={"x-envoy-fault-delay-request": "1"}).status_code == 200
    assert client.get("/never").status_code == 200
    assert metric(gw, aborts) == before[0] + 3
    assert metric(gw, delays) == before[1] + 1


# -- validation ----------------------------------------------------------------------------


def _config_with(action: str) -> str:
    head = textwrap.dedent("""\
        apiEndpoints:
          api: {host: '*'}
        serviceEndpoints:
          backend: {url: 'http://127.0.0.1:1'}
        policies: [fault, proxy]
        pipelines:
          main:
            apiEndpoints: [api]
            policies:
              - fault:
                  - action:
        """)
    tail = "      - proxy:\n          - action: {serviceEndpoint: backend}\n"
    return head + textwrap.indent(action, " " * 14) + "\n" + tail


@pytest.mark.parametrize(("action", "line", "field", "words"), [
    ("abort:\n  httpStatus: 503\n  percentage: 150", 14,
     "fault[0].action.abort.percentage", "percentage must be between 0 and 100"),
    ("delay: {fixedDelay: 10, percentage: -1}", 12,
     "fault[0].action.delay.percentage", "between 0 and 100"),
    ("abort: {httpStatus: 700}", 12, "fault[0].action.abort.httpStatus", "200-599"),
    ("abort: {httpStatus: 503, grpcStatus: 14}", 12, "fault[0].action.abort",
     "exactly one of httpStatus, grpcStatus or headerControlled"),
    ("delay: {percentage: 10}", 12, "fault[0].action.delay",
     "exactly one of fixedDelay or headerControlled"),
    ("maxActiveFaults: 3", 11, "fault[0].action", "a delay, an abort, or both"),
    ("abort: {httpStatus: 503, percent: 5}", 12, "fault[0].action.abort.percent", ""),
])
def test_invalid_config_is_located(action: str, line: int, field: str, words: str) -> None:
    text = _config_with(action)
    with pytest.raises(ConfigError) as info:
        parse_gateway(text)
    message = str(info.value)
    assert f"gateway.config.yml:{line}:" in message, message
    assert f"pipelines.main.policies[0].{field}" in message, message
    assert words in message, message


def test_valid_fractional_config() -> None:
    config = parse_gateway(_config_with(
        "abort: {httpStatus: 503, percentage: 0.1}\nmaxActiveFaults: 10"))
    assert config.pipelines["main"] is not None

