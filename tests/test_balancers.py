"""Load balancers as algorithms: proportions, consistency, zones, panic, slow start.

Endpoints are the real ``Endpoint`` dataclass; their pool is a stand-in with
the three attributes ``Endpoint.active`` reads (open, idle, waiting), so the
load a balancer sees is set directly. End-to-end balancing through the
gateway is tested elsewhere.
"""

from __future__ import annotations

import itertools
import random
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest

from meshgate.config.mesh import LoadBalancer
from meshgate.protocol.exchange import Exchange
from meshgate.upstream.balancer import BALANCERS, Balancer, build_balancer
from meshgate.upstream.balancer._alias import alias_table
from meshgate.upstream.balancer._hashkey import cookie_value, key_function, query_value
from meshgate.upstream.balancer.maglev import Maglev, next_prime
from meshgate.upstream.balancer.peak_ewma import FAILURE_RTT, PeakEwma
from meshgate.upstream.balancer.round_robin import smooth_cycle
from meshgate.upstream.cluster import Endpoint
from meshgate.upstream.pool import Pool

ALL_TYPES = ["round-robin", "least-request", "random", "ring-hash", "maglev", "peak-ewma"]
HASHING = ["ring-hash", "maglev"]


def stand_in_pool(busy: int = 0) -> Pool:
    """A pool that is never used to connect; ``Endpoint.active`` reads open - idle + waiting."""
    pool = Pool(None, "stand-in", 80, None, None, 1.0, 1.0, 100, 10, 60.0)  # type: ignore[arg-type]
    pool.open = busy
    return pool


def endpoint(name: str, weight: int = 1, zone: str = "", healthy: bool = True,
             added: float = 0.0, busy: int = 0) -> Endpoint:
    return Endpoint(f"http://{name}:80", name, 80, "http", name.encode(), b"",
                    stand_in_pool(busy), key=f"http://{name}:80",
                    weight=weight, zone=zone, healthy=healthy, added=added)


def endpoints(n: int, **kw: Any) -> list[Endpoint]:
    return [endpoint(f"10.0.0.{i}", **kw) for i in range(n)]


def balancer(kind: str, eps: list[Endpoint], now: float = 1000.0, zone: str = "",
             **config: Any) -> Balancer:
    if kind in HASHING and "hashOn" not in config:
        config["hashOn"] = {"header": "x-user"}
    lb = build_balancer(LoadBalancer.model_validate({"type": kind, **config}), zone)
    lb.update(eps, now)
    return lb


def request(user: str | None = None, path: bytes = b"/", cookie: bytes | None = None,
            client: bytes = b"192.0.2.1") -> Exchange:
    headers = [(b"host", b"svc")]
    if user is not None:
        headers.append((b"x-user", user.encode()))
    if cookie is not None:
        headers.append((b"cookie", cookie))
    return Exchange(None, b"GET", path, headers, b"svc", b"http",  # type: ignore[arg-type]
                    client, b"1.1", False, 0.0)


def shares(lb: Balancer, picks: int, ex: Exchange | None = None) -> Counter[str]:
    counts: Counter[str] = Counter()
    for _ in range(picks):
        ep = lb.pick(ex)
        assert ep is not None
        counts[ep.host] += 1
    return counts


@pytest.fixture(autouse=True)
def seeded() -> Iterator[None]:
    """Random draws repeat from run to run; the global state is given back."""
    state = random.getstate()
    random.seed(20240601)
    yield
    random.setstate(state)


# -- registry -----------------------------------------------------------------
def test_every_config_type_is_registered() -> None:
    assert BALANCERS.names() == sorted(ALL_TYPES)
    assert [t for t in ALL_TYPES if build_balancer(LoadBalancer.model_validate(
        {"type": t, "hashOn": {"sourceIp": True}}), "").wants_latency] == ["peak-ewma"]


def test_local_zone_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MESHGATE_ZONE", "env-zone")
    assert build_balancer(LoadBalancer()).local_zone == "env-zone"
    assert build_balancer(LoadBalancer(localZone="cfg")).local_zone == "cfg"
    assert build_balancer(LoadBalancer(localZone="cfg"), "given").local_zone == "given"
    monkeypatch.delenv("MESHGATE_ZONE")
    assert build_balancer(LoadBalancer()).local_zone == ""


@pytest.mark.parametrize("kind", ALL_TYPES)
def test_no_endpoints_picks_none(kind: str) -> None:
    lb = balancer(kind, [])
    assert lb.pick(request("u1")) is None
    assert lb.pick(None) is None
    # none available and panic disabled: nothing to pick either
    lb = balancer(kind, endpoints(3, healthy=False), panicThreshold=0)
    assert lb.pick(request("u1")) is None


@pytest.mark.parametrize("kind", ALL_TYPES)
def test_exclude_avoids_the_failed_endpoint(kind: str) -> None:
    eps = endpoints(3)
    lb = balancer(kind, eps)
    for i in range(300):
        ex = request(f"user-{i}")
        first = lb.pick(ex)
        assert first is not None
        second = lb.pick(ex, exclude=first)
        assert second is not None and second is not first
    # the only eligible endpoint is still returned
    lone = balancer(kind, eps[:1])
    assert lone.pick(request("u"), exclude=eps[0]) is eps[0]


# -- round-robin ----------------------------------------------------------------
def test_round_robin_equal_weights_is_a_rotation() -> None:
    eps = endpoints(4)
    lb = balancer("round-robin", eps)
    picks = [lb.pick(None) for _ in range(12)]
    assert picks[4:8] == picks[:4] == picks[8:]
    assert set(picks[:4]) == set(eps)


def test_smooth_weighted_round_robin_matches_nginx() -> None:
    assert smooth_cycle([5, 1, 1]) == [0, 0, 1, 0, 2, 0, 0]


def longest_run(seq: list[Any]) -> int:
    longest = run = 1
    for prev, cur in itertools.pairwise(seq):
        run = run + 1 if cur is prev else 1
        longest = max(longest, run)
    return longest


@pytest.mark.parametrize("weights", [[5, 1, 1], [3, 2, 1], [10, 20, 30, 40]])
def test_weighted_round_robin_exact_and_smooth(weights: list[int]) -> None:
    eps = [endpoint(f"h{i}", weight=w) for i, w in enumerate(weights)]
    lb = balancer("round-robin", eps)
    total = sum(weights)
    seq = [lb.pick(None) for _ in range(total * 20)]
    counts = Counter(seq)
    assert [counts[ep] for ep in eps] == [w * 20 for w in weights]
    # every window of one cycle holds each endpoint exactly `weight` times
    for start in range(0, len(seq) - total, 7):
        window = Counter(seq[start:start + total])
        assert [window[ep] for ep in eps] == weights
    # smooth: the heaviest never runs for its whole weight in a row
    assert longest_run(seq) < max(weights) or max(weights) == 1


def test_weighted_round_robin_long_cycle_uses_deadlines() -> None:
    eps = [endpoint("a", weight=3001), endpoint("b", weight=2999), endpoint("c", weight=1)]
    lb = balancer("round-robin", eps)
    seq = [lb.pick(None) for _ in range(6001 * 2)]
    counts = Counter(seq)
    for ep in eps:
        assert abs(counts[ep] - 2 * ep.weight) <= 2
    assert longest_run(seq) <= 2


# -- least-request ----------------------------------------------------------------
def test_least_request_prefers_less_loaded() -> None:
    eps = [endpoint(f"h{i}", busy=i) for i in range(4)]
    counts = shares(balancer("least-request", eps), 4000)
    assert counts["h0"] > counts["h1"] > counts["h2"] > 0
    assert counts["h3"] == 0              # the busiest loses every pair it is drawn in
    # all idle: an even spread
    counts = shares(balancer("least-request", endpoints(4)), 4000)
    assert min(counts.values()) > 800


def test_least_request_more_choices() -> None:
    eps = [endpoint(f"h{i}", busy=0 if i == 0 else 4) for i in range(8)]
    two = shares(balancer("least-request", eps), 4000)["h0"]
    four = shares(balancer("least-request", eps, choiceCount=4), 4000)["h0"]
    assert four > two > 4000 / 8


def test_least_request_weighted_by_active_bias() -> None:
    heavy, light = endpoint("heavy", weight=3), endpoint("light", weight=1)
    lb = balancer("least-request", [heavy, light])
    counts = shares(lb, 4000)                 # unloaded: the weights
    assert abs(counts["heavy"] - 3000) <= 2
    heavy.pool.open = 5                       # weight 3 / 6 vs 1 / 1
    counts = shares(lb, 3000)
    assert abs(counts["light"] - 2000) <= 2


# -- random -----------------------------------------------------------------------
def test_random_weighted_proportions() -> None:
    eps = [endpoint(f"h{i}", weight=w) for i, w in enumerate([1, 2, 3, 4])]
    counts = shares(balancer("random", eps), 10_000)
    for i, w in enumerate([1, 2, 3, 4]):
        assert abs(counts[f"h{i}"] / 10_000 - w / 10) < 0.02


def test_random_equal_weights_spread() -> None:
    counts = shares(balancer("random", endpoints(5)), 10_000)
    assert all(abs(c - 2000) < 200 for c in counts.values()) and len(counts) == 5


def test_alias_table_probabilities() -> None:
    weights = [1.0, 7.0, 2.0]
    prob, alias = alias_table(weights)
    n = len(weights)
    mass = [0.0] * n
    for i in range(n):
        mass[i] += prob[i] / n
        mass[alias[i]] += (1 - prob[i]) / n
    assert mass == pytest.approx([w / 10 for w in weights])


# -- ring-hash and maglev -------------------------------------------------------------
KEYS = [f"user-{i}" for i in range(10_000)]


def owners(lb: Balancer) -> dict[str, Endpoint]:
    out = {}
    for k in KEYS:
        ep = lb.pick(request(k))
        assert ep is not None
        out[k] = ep
    return out


@pytest.mark.parametrize("kind", HASHING)
def test_hash_same_key_same_endpoint_in_every_worker(kind: str) -> None:
    eps = endpoints(5)
    lb = balancer(kind, eps)
    first = owners(lb)
    assert owners(lb) == first
    assert len(set(first.values())) == 5
    # another worker (or sidecar) seeing the set in another order agrees
    other = balancer(kind, list(reversed(eps)))
    assert owners(other) == first


@pytest.mark.parametrize("kind", HASHING)
def test_hash_removing_one_of_n_moves_about_one_nth(kind: str) -> None:
    n = 10
    eps = endpoints(n)
    lb = balancer(kind, eps)
    before = owners(lb)
    gone = eps[3]
    lb.update([ep for ep in eps if ep is not gone], 1001.0)
    after = owners(lb)
    moved = [k for k in KEYS if after[k] is not before[k]]
    assert len(moved) < 1.5 * len(KEYS) / n
    assert all(after[k] is not gone for k in KEYS)
    stayers = [k for k in KEYS if before[k] is not gone]
    moved_stayers = [k for k in stayers if after[k] is not before[k]]
    assert len(moved_stayers) < 0.03 * len(stayers)
    if kind == "ring-hash":
        assert not moved_stayers          # a ring moves only the removed arcs


@pytest.mark.parametrize("kind", HASHING)
def test_hash_respects_weights(kind: str) -> None:
    eps = [endpoint("a", weight=1), endpoint("b", weight=1), endpoint("c", weight=2)]
    counts = Counter(ep.host for ep in owners(balancer(kind, eps)).values())
    assert abs(counts["a"] / len(KEYS) - 0.25) < 0.05
    assert abs(counts["b"] / len(KEYS) - 0.25) < 0.05
    assert abs(counts["c"] / len(KEYS) - 0.50) < 0.05


@pytest.mark.parametrize("kind", HASHING)
def test_hash_without_key_picks_at_random(kind: str) -> None:
    counts = shares(balancer(kind, endpoints(4)), 4000, request(None))
    assert len(counts) == 4 and min(counts.values()) > 800


@pytest.mark.parametrize("kind", HASHING)
def test_hash_retry_second_choice_is_stable(kind: str) -> None:
    lb = balancer(kind, endpoints(5))
    ex = request("sticky")
    first = lb.pick(ex)
    seconds = {lb.pick(ex, exclude=first) for _ in range(20)}
    assert len(seconds) == 1 and first not in seconds


def test_ring_size_follows_minimum_and_weights() -> None:
    eps = [endpoint("a", weight=1), endpoint("b", weight=3)]
    lb = balancer("ring-hash", eps, minimumRingSize=100)
    ring = Counter(ep.host for ep in lb._owners)  # type: ignore[attr-defined]
    assert ring == {"a": 32, "b": 96}        # 32 points per unit of weight: 128 >= 100


def test_maglev_table_size_is_prime_and_weighted() -> None:
    assert next_prime(65537) == 65537 and next_prime(1000) == 1009
    eps = [endpoint("a", weight=1), endpoint("b", weight=4)]
    lb = balancer("maglev", eps, tableSize=1000)
    assert isinstance(lb, Maglev) and lb.table_size == 1009
    table = Counter(ep.host for ep in lb._slots)  # type: ignore[attr-defined]
    assert sum(table.values()) == 1009
    assert abs(table["b"] / 1009 - 0.8) < 0.01


@pytest.mark.parametrize(("hash_on", "ex", "key"), [
    ({"header": "X-User"}, request("alice"), b"alice"),
    ({"cookie": "sid"}, request(cookie=b"a=1; sid=\"xyz\"; b=2"), b"xyz"),
    ({"cookie": "sid"}, request(cookie=b"a=1"), None),
    ({"queryParameter": "user id"}, request(path=b"/p?x=1&user%20id=bob+b%21"), b"bob b!"),
    ({"queryParameter": "u"}, request(path=b"/p?uu=1"), None),
    ({"queryParameter": "u"}, request(path=b"/p"), None),
    ({"sourceIp": True}, request(client=b"198.51.100.7"), b"198.51.100.7"),
    ({"header": "x-none"}, request("alice"), None),
])
def test_hash_keys(hash_on: dict[str, Any], ex: Exchange, key: bytes | None) -> None:
    from meshgate.config.mesh import HashOn
    get = key_function(HashOn.model_validate(hash_on))
    assert get(ex) == key
    assert get(None) is None


def test_cookie_and_query_parsing() -> None:
    assert cookie_value(b"sid=1;sid=2", b"sid") == b"1"
    assert cookie_value(b"xsid=1; sid=", b"sid") == b""
    assert query_value(b"a=1&b&c=3", b"b") == b""
    assert query_value(b"a=1&a=2", b"a") == b"1"


# -- zones and panic ------------------------------------------------------------------
def zoned() -> list[Endpoint]:
    return [endpoint("a1", zone="a"), endpoint("a2", zone="a"),
            endpoint("b1", zone="b"), endpoint("b2", zone="b"), endpoint("b3", zone="b")]


@pytest.mark.parametrize("kind", ALL_TYPES)
def test_zone_aware_prefers_local_then_fails_over(kind: str) -> None:
    eps = zoned()
    lb = balancer(kind, eps, zone="a")
    counts = shares(lb, 1000, request(None))
    assert set(counts) == {"a1", "a2"} and lb.local_only
    eps[0].healthy = False                  # half the local zone: not below 50%
    lb.update(eps, 1001.0)
    assert set(shares(lb, 200, request(None))) == {"a2"}
    eps[1].ejected_until = 2000.0           # the local zone is gone: every zone
    lb.update(eps, 1002.0)
    assert set(shares(lb, 1000, request(None))) == {"b1", "b2", "b3"} and not lb.local_only


def test_zone_below_threshold_spreads_over_all_zones() -> None:
    eps = [endpoint("a1", zone="a"), endpoint("a2", zone="a", healthy=False),
           endpoint("a3", zone="a", healthy=False), endpoint("b1", zone="b")]
    lb = balancer("round-robin", eps, zone="a")
    assert set(shares(lb, 100)) == {"a1", "b1"}
    assert set(shares(balancer("round-robin", zoned(), zone="a", zoneAware=False), 100)) \
        == {"a1", "a2", "b1", "b2", "b3"}


@pytest.mark.parametrize("kind", ALL_TYPES)
def test_panic_below_threshold_spreads_over_all(kind: str) -> None:
    eps = endpoints(4)
    for ep in eps[1:]:
        ep.healthy = False                  # 25% available < 50%
    lb = balancer(kind, eps)
    assert lb.panic
    assert len(shares(lb, 2000, request(None))) == 4
    eps[1].healthy = True                   # 50%: not in panic, only the available
    lb.update(eps, 1001.0)
    assert not lb.panic
    assert set(shares(lb, 1000, request(None))) == {"10.0.0.0", "10.0.0.1"}


# -- slow start ---------------------------------------------------------------------------
def test_slow_start_effective_weight_formula() -> None:
    config = {"slowStart": {"window": 10_000, "aggression": 1.0, "minWeightPercent": 10}}
    lb = balancer("round-robin", [], **config)
    ep = endpoint("new", weight=4, added=100.0)
    assert lb.effective_weight(ep, 100.0) == pytest.approx(0.4)      # floor: 10%
    assert lb.effective_weight(ep, 105.0) == pytest.approx(2.0)
    assert lb.effective_weight(ep, 110.0) == 4.0
    curved = balancer("round-robin", [], slowStart={"window": 10_000, "aggression": 2.0,
                                                    "minWeightPercent": 0})
    assert curved.effective_weight(ep, 102.5) == pytest.approx(4 * 0.25 ** 0.5)
    assert curved.effective_weight(ep, 100.0) == pytest.approx(4 * 0.001 ** 0.5)
    assert curved.effective_weight(endpoint("old", weight=4), 100.0) == 4.0   # added unknown


@pytest.mark.parametrize("kind", ["round-robin", "least-request", "random"])
def test_slow_start_ramps_a_new_endpoint(kind: str) -> None:
    old, new = endpoint("old"), endpoint("new", added=1000.0)
    lb = balancer(kind, [old, new], now=1001.0,
                  slowStart={"window": 10_000, "minWeightPercent": 10})
    share = shares(lb, 4000)["new"] / 4000             # weight 0.1 vs 1
    assert share == pytest.approx(0.1 / 1.1, abs=0.03)
    lb.sweep(1005.0)                                   # half way: 0.5 vs 1
    assert shares(lb, 4000)["new"] / 4000 == pytest.approx(0.5 / 1.5, abs=0.03)
    lb.sweep(1010.0)                                   # full weight
    assert shares(lb, 4000)["new"] / 4000 == pytest.approx(0.5, abs=0.03)


# -- peak-ewma ------------------------------------------------------------------------------
def test_peak_ewma_avoids_the_slow_endpoint() -> None:
    eps = endpoints(3)
    slow = eps[0]
    lb = balancer("peak-ewma", eps)
    counts: Counter[str] = Counter()
    for _ in range(3000):
        ep = lb.pick(None)
        assert ep is not None
        counts[ep.host] += 1
        lb.observe(ep, 0.100 if ep is slow else 0.010, True)
    assert counts[slow.host] < 0.05 * 3000
    assert min(counts[e.host] for e in eps[1:]) > 1000


def test_peak_ewma_is_peak_sensitive_and_tries_new_endpoints() -> None:
    a, b = endpoint("a"), endpoint("b")
    lb = balancer("peak-ewma", [a, b])
    assert isinstance(lb, PeakEwma)
    for _ in range(20):
        lb.observe(a, 0.010, True)
    lb.observe(a, 0.500, True)                          # one slow answer counts at once
    assert lb.cost(a) == pytest.approx(0.5, rel=0.01)
    assert lb.cost(b) == 0.0                             # unmeasured, idle: tried first
    assert lb.pick(None) is b
    b.pool.open = 1
    assert lb.pick(None) is a                            # in flight, no answer: penalised


def test_peak_ewma_counts_load_and_failures() -> None:
    a, b = endpoint("a"), endpoint("b", busy=4)
    lb = balancer("peak-ewma", [a, b])
    lb.observe(a, 0.020, True)
    lb.observe(b, 0.010, True)                           # faster, but 5 in its queue
    assert lb.pick(None) is a
    lb.observe(a, 0.001, False)                          # a fast failure is not fast
    assert lb.cost(a) > 0.99 * FAILURE_RTT            # (decays a little as time passes)
    assert lb.pick(None) is b
