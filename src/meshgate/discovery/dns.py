"""``discovery: {type: dns}`` -- endpoints from A, AAAA or SRV records.

Theory of operation
-------------------
One loop: resolve, emit the set, sleep until the records' TTL runs out
(clamped to ``minRefresh`` .. ``maxRefresh``), resolve again -- Envoy's
STRICT_DNS cluster with ``respect_dns_ttl``.

* ``A`` / ``AAAA``: every address is an endpoint on ``port``.
* ``SRV``: only the records of the lowest priority value are used (RFC 2782:
  the others are fallbacks); each target is resolved to its A and AAAA
  addresses, and the record's weight becomes the endpoint's (at least 1).
  A target of ``.`` means "no service here" and is skipped.

What an answer means is kept apart from what a failure means: NXDOMAIN or
an empty answer is the source saying "no instances" (the empty set is
emitted); a timeout, SERVFAIL or REFUSED is the provider's own trouble, so
the last set stays, the provider turns stale and retries with jittered
backoff.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Literal

import dns.asyncresolver
import dns.exception
import dns.nameserver
import dns.resolver
from pydantic import Field, field_validator, model_validator

from meshgate.config.base import MeshModel, Millis
from meshgate.discovery import DISCOVERY, EndpointSpec, ProviderContext, ProviderSpec
from meshgate.discovery._source import Backoff, SourceProvider

MIN_DELAY = 0.05       # never re-resolve in a tight loop, whatever TTL and minRefresh say


class DnsParams(MeshModel):
    name: str = Field(description="Name to resolve, e.g. users.svc or _http._tcp.users.svc")
    recordType: Literal["A", "AAAA", "SRV"] = Field("A", description="Record type to query")
    port: int = Field(80, ge=1, le=65535, description="Port of A/AAAA endpoints")
    scheme: Literal["http", "https"] = Field("http", description="Scheme of the endpoints")
    nameservers: list[str] = Field(
        default_factory=list, description="host:port of the servers (default: system resolver)")
    minRefresh: Millis = Field(1000, description="Shortest time between resolutions")
    maxRefresh: Millis = Field(300000, description="Longest time between resolutions")
    timeout: Millis = Field(5000, description="A resolution not answered in time fails")

    @field_validator("nameservers")
    @classmethod
    def _servers(cls, value: list[str]) -> list[str]:
        for item in value:
            split_host_port(item)
        return value

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("expected a DNS name")
        return value.strip()

    @model_validator(mode="after")
    def _refresh_range(self) -> DnsParams:
        if self.minRefresh > self.maxRefresh:
            raise ValueError("minRefresh must not exceed maxRefresh")
        return self


def split_host_port(item: str, default_port: int = 53) -> tuple[str, int]:
    """``"127.0.0.1:5353"``, ``"[::1]:53"``, ``"10.0.0.2"`` -> (host, port)."""
    host, port = item, default_port
    if item.startswith("["):
        host, _, rest = item[1:].partition("]")
        if rest:
            port = int(rest.removeprefix(":"))
    elif item.count(":") == 1:
        host, _, text = item.partition(":")
        port = int(text)
    if not host or not 0 < port < 65536:
        raise ValueError(f"expected host:port, got {item!r}")
    return host, port


class DnsFailure(Exception):
    """The resolver, not the zone, failed: timeout, SERVFAIL, REFUSED."""


class DnsProvider(SourceProvider):
    kind = "dns"

    def __init__(self, service: str, params: DnsParams,
                 on_stale: Callable[[bool], None] | None = None) -> None:
        super().__init__(service, on_stale)
        self.params = params
        self.resolver = _resolver(params)

    async def _run(self) -> None:
        p = self.params
        backoff = Backoff(max(p.minRefresh, 100) / 1000, min(p.maxRefresh / 1000, 30.0))
        while True:
            try:
                specs, ttl = await self.resolve()
            except DnsFailure as exc:
                self._fail(str(exc))
                await asyncio.sleep(backoff.next())
                continue
            backoff.reset()
            self._ok()
            self._emit(specs)
            delay = min(max(ttl, p.minRefresh / 1000), p.maxRefresh / 1000)
            await asyncio.sleep(max(delay, MIN_DELAY))

    async def resolve(self) -> tuple[list[EndpointSpec], float]:
        """The endpoint set and seconds until it should be resolved again."""
        p = self.params
        if p.recordType == "SRV":
            return await self._resolve_srv()
        addresses, ttl = await self._addresses(p.name, p.recordType)
        return [EndpointSpec(host=a, port=p.port, scheme=p.scheme, id=f"{a}:{p.port}")
                for a in addresses], ttl

    async def _query(self, name: str, rdtype: str) -> tuple[list[object], float]:
        """Records of one query (``[]`` for NXDOMAIN / no data) and their TTL."""
        try:
            answer = await self.resolver.resolve(name, rdtype, search=False,
                                                 raise_on_no_answer=False)
        except dns.resolver.NXDOMAIN:
            return [], 0.0
        except dns.resolver.NoNameservers as exc:
            raise DnsFailure(f"{rdtype} {name}: no server answered ({_why(exc)})") from None
        except dns.exception.Timeout:
            raise DnsFailure(f"{rdtype} {name}: timed out") from None
        except dns.exception.DNSException as exc:
            raise DnsFailure(f"{rdtype} {name}: {exc}") from None
        ttl = max(0.0, answer.expiration - time.time())
        if answer.rrset is None:
            return [], ttl
        return list(answer.rrset), ttl

    async def _addresses(self, name: str, rdtype: str) -> tuple[list[str], float]:
        records, ttl = await self._query(name, rdtype)
        return sorted({r.address for r in records}), ttl   # type: ignore[attr-defined]

    async def _resolve_srv(self) -> tuple[list[EndpointSpec], float]:
        p = self.params
        records, ttl = await self._query(p.name, "SRV")
        usable = [r for r in records if str(r.target) != "."]  # type: ignore[attr-defined]
        if not usable:
            return [], ttl
        lowest = min(r.priority for r in usable)  # type: ignore[attr-defined]
        group = [r for r in usable if r.priority == lowest]  # type: ignore[attr-defined]
        targets = sorted({str(r.target) for r in group})  # type: ignore[attr-defined]
        looked = await asyncio.gather(*(self._target(t) for t in targets))
        by_target = dict(zip(targets, looked, strict=True))
        specs: dict[tuple[str, int], EndpointSpec] = {}
        for r in group:
            target = str(r.target)  # type: ignore[attr-defined]
            addresses, t_ttl = by_target[target]
            ttl = min(ttl, t_ttl)
            for address in addresses:
                port = int(r.port)  # type: ignore[attr-defined]
                weight = max(1, int(r.weight))  # type: ignore[attr-defined]
                key = (address, port)
                if key in specs:       # two records, one address: add their weights
                    weight += specs[key].weight
                specs[key] = EndpointSpec(
                    host=address, port=port, scheme=p.scheme, weight=weight,
                    id=f"{target.rstrip('.')}:{port}" if len(addresses) == 1
                    else f"{address}:{port}",
                    metadata=(("target", target.rstrip(".")),
                              ("priority", str(lowest))))
        return list(specs.values()), ttl

    async def _target(self, target: str) -> tuple[list[str], float]:
        (v4, ttl4), (v6, ttl6) = await asyncio.gather(
            self._addresses(target, "A"), self._addresses(target, "AAAA"))
        ttls = [t for t, found in ((ttl4, v4), (ttl6, v6)) if found] or [min(ttl4, ttl6)]
        return v4 + v6, min(ttls)


def _why(exc: dns.resolver.NoNameservers) -> str:
    errors = exc.kwargs.get("errors") or []
    texts = sorted({str(e[3]) for e in errors if len(e) > 3})
    return "; ".join(texts) or "SERVFAIL or REFUSED"


def _resolver(params: DnsParams) -> dns.asyncresolver.Resolver:
    if params.nameservers:
        resolver = dns.asyncresolver.Resolver(configure=False)
        resolver.nameservers = [dns.nameserver.Do53Nameserver(*split_host_port(s))
                                for s in params.nameservers]
    else:
        resolver = dns.asyncresolver.Resolver()
    lifetime = params.timeout / 1000 if params.timeout else 5.0
    resolver.lifetime = lifetime
    resolver.timeout = min(2.0, lifetime)
    resolver.cache = None          # the TTL schedule is ours
    return resolver


def _build(params: DnsParams, context: ProviderContext) -> DnsProvider:
    return DnsProvider(context.service, params, context.on_stale)


DISCOVERY.add(ProviderSpec("dns", DnsParams, _build,
                           "A / AAAA / SRV records, re-resolved when their TTL expires"))
