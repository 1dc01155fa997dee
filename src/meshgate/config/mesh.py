"""Models of the mesh sections of a serviceEndpoint (meshgate extensions).

Theory of operation
-------------------
Express Gateway's serviceEndpoint had ``url`` / ``urls`` and ``proxyOptions``.
meshgate adds, each optional and each rejecting unknown keys:

* ``discovery``      where the endpoint set comes from (``type`` names a
  provider in ``meshgate.discovery``; its other keys are that provider's
  params, validated by the provider's own model);
* ``healthCheck``    active HTTP, TCP or gRPC checks, as Envoy's health checker;
* ``loadBalancer``   how an endpoint is chosen (a string is the type);
* ``retry``          Envoy's retry policy, with a retry budget;
* ``circuitBreakers`` limits on the whole cluster, as Envoy's thresholds;
* ``outlierDetection`` passive ejection of failing endpoints;
* ``requestTimeout`` the overall deadline covering every retry.

Defaults are Envoy's (or Linkerd's for peak-ewma) unless the docs say
otherwise; ``docs/mesh.md`` lists them.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, ValidationError, field_validator, model_validator

from meshgate.config.base import MeshModel, Millis, StrList, raise_errors, relocate

# -- health checks -------------------------------------------------------------


def _statuses(value: Any) -> Any:
    if value is None:
        return value
    if isinstance(value, (int, str)):
        value = [value]
    return [str(v) for v in value]


def parse_status_ranges(items: list[str]) -> list[tuple[int, int]]:
    """``["200-399", "404"]`` -> ``[(200, 399), (404, 404)]``."""
    out = []
    for item in items:
        lo, _, hi = item.partition("-")
        low, high = int(lo), int(hi or lo)
        if not 100 <= low <= high <= 599:
            raise ValueError(f"expected a status or range within 100-599, got {item!r}")
        out.append((low, high))
    return out


class HealthCheck(MeshModel):
    type: Literal["http", "tcp", "grpc"] = Field(
        "http", description="http: GET path; tcp: connect; grpc: grpc.health.v1.Health/Check "
                            "(protocol h2 or h2c)")
    path: str = Field("/", description="Path of the HTTP check")
    host: str | None = Field(
        None, description="Host header of the HTTP check, :authority of the gRPC check")
    service: str = Field(
        "", description="gRPC check: the service name asked about ('' = the whole server)")
    expectedStatuses: Annotated[list[str], BeforeValidator(_statuses)] = Field(
        default_factory=lambda: ["200-399"], description="Statuses or ranges that pass")
    interval: Millis = Field(5000, description="Time between checks of a healthy endpoint")
    unhealthyInterval: Millis | None = Field(
        None, description="Time between checks of an unhealthy endpoint (default: interval)")
    timeout: Millis = Field(1000, description="A check not answered in time fails")
    healthyThreshold: int = Field(2, ge=1, description="Passes in a row to become healthy")
    unhealthyThreshold: int = Field(3, ge=1, description="Failures in a row to become unhealthy")
    jitter: Millis = Field(0, description="Random extra delay added to each interval")

    @field_validator("expectedStatuses")
    @classmethod
    def _ranges(cls, value: list[str]) -> list[str]:
        parse_status_ranges(value)
        return value

    @field_validator("path")
    @classmethod
    def _path(cls, value: str) -> str:
        if not value.startswith("/"):
            raise ValueError("expected a path starting with '/'")
        return value

    @model_validator(mode="after")
    def _fields_of_type(self) -> HealthCheck:
        given = self.model_fields_set
        if self.type == "grpc":
            wrong = [k for k in ("path", "expectedStatuses") if k in given]
            if wrong:
                raise ValueError(f"{' and '.join(wrong)} do not apply to a grpc check "
                                 "(it passes on the SERVING status of 'service')")
        elif "service" in given:
            raise ValueError("service applies only to type: grpc")
        return self


# -- load balancing --------------------------------------------------------------


class HashOn(MeshModel):
    header: str | None = Field(None, description="Hash this request header")
    cookie: str | None = Field(None, description="Hash this cookie")
    queryParameter: str | None = Field(None, description="Hash this query parameter")
    sourceIp: bool = Field(False, description="Hash the client address")

    @model_validator(mode="after")
    def _one(self) -> HashOn:
        chosen = [k for k in ("header", "cookie", "queryParameter") if getattr(self, k)]
        if len(chosen) + int(self.sourceIp) != 1:
            raise ValueError("expected exactly one of header, cookie, queryParameter, sourceIp")
        return self


class SlowStart(MeshModel):
    window: Millis = Field(0, description="New endpoints ramp up their share over this time")
    aggression: float = Field(1.0, gt=0, description="Ramp curve; 1.0 is linear")
    minWeightPercent: float = Field(10.0, ge=0, le=100,
                                    description="Share a new endpoint starts with")


LB_TYPES = ("round-robin", "least-request", "random", "ring-hash", "maglev", "peak-ewma")
LbType = Literal["round-robin", "least-request", "random", "ring-hash", "maglev", "peak-ewma"]


def _lb_shorthand(value: Any) -> Any:
    return {"type": value} if isinstance(value, str) else value


class LoadBalancer(MeshModel):
    type: LbType = "round-robin"
    choiceCount: int = Field(2, ge=2, description="least-request: endpoints sampled per pick")
    hashOn: HashOn | None = Field(None, description="ring-hash / maglev: what to hash")
    minimumRingSize: int = Field(1024, ge=1, description="ring-hash: ring entries")
    tableSize: int = Field(65537, ge=1, description="maglev: lookup table size (a prime)")
    decayTime: Millis = Field(10000, description="peak-ewma: latency decay time")
    slowStart: SlowStart | None = None
    panicThreshold: float = Field(
        50.0, ge=0, le=100, description="Below this % healthy, balance over all endpoints")
    localZone: str | None = Field(
        None, description="Prefer endpoints in this zone (default: $MESHGATE_ZONE)")
    zoneAware: bool = Field(True, description="Prefer the local zone while it is healthy")

    @model_validator(mode="after")
    def _hash_needs_key(self) -> LoadBalancer:
        if self.type in ("ring-hash", "maglev") and self.hashOn is None:
            raise ValueError(f"{self.type} needs hashOn (header, cookie, queryParameter "
                             "or sourceIp)")
        return self


LoadBalancerField = Annotated[
    LoadBalancer, BeforeValidator(_lb_shorthand, json_schema_input_type=LbType | LoadBalancer)]

# -- retries, timeouts, circuit breakers, outliers -----------------------------------

RETRY_ON = ("5xx", "gateway-error", "reset", "connect-failure", "retriable-4xx",
            "retriable-status-codes")


class Backoff(MeshModel):
    baseInterval: Millis = Field(25, description="Fully jittered exponential backoff base")
    maxInterval: Millis | None = Field(None, description="Cap (default 10x baseInterval)")


class RetryBudget(MeshModel):
    percent: float = Field(20.0, ge=0, le=100,
                           description="Active retries allowed, as % of active requests")
    minRetryConcurrency: int = Field(3, ge=0, description="Retries always allowed at once")


class Retry(MeshModel):
    retryOn: StrList = Field(default_factory=lambda: ["5xx"],
                             description="Conditions that trigger a retry (Envoy's names)")
    numRetries: int = Field(1, ge=0, description="Retries after the first attempt")
    perTryTimeout: Millis | None = Field(
        None, description="Timeout of each attempt (default: the serviceEndpoint's timeout)")
    retriableStatusCodes: list[int] = Field(default_factory=list)
    backoff: Backoff = Field(default_factory=lambda: Backoff.model_validate({}))
    budget: RetryBudget = Field(default_factory=lambda: RetryBudget.model_validate({}))
    maxBodyBytes: int = Field(65536, ge=0,
                              description="Requests with a longer body are not retried")

    @field_validator("retryOn")
    @classmethod
    def _known(cls, value: list[str]) -> list[str]:
        names = [v.strip() for item in value for v in item.split(",") if v.strip()]
        for name in names:
            if name not in RETRY_ON:
                raise ValueError(f"unknown retryOn {name!r}; expected one of "
                                 + ", ".join(RETRY_ON))
        return names


class CircuitBreakers(MeshModel):
    maxConnections: int = Field(1024, ge=1, description="Upstream connections, all endpoints")
    maxPendingRequests: int = Field(1024, ge=0, description="Requests waiting for a connection")
    maxRequests: int = Field(1024, ge=1, description="Requests in flight")
    maxRetries: int = Field(3, ge=0, description="Retries in flight")


class SuccessRate(MeshModel):
    minimumHosts: int = Field(5, ge=1)
    requestVolume: int = Field(100, ge=1)
    stdevFactor: int = Field(1900, ge=1, description="Eject below mean - stdev*factor/1000")


class OutlierDetection(MeshModel):
    consecutive5xx: int = Field(5, ge=0, description="0 disables")
    consecutiveGatewayFailure: int = Field(5, ge=0, description="502/503/504 or local failures")
    interval: Millis = Field(10000, description="How often ejections are reviewed")
    baseEjectionTime: Millis = Field(30000)
    maxEjectionTime: Millis = Field(300000)
    maxEjectionPercent: float = Field(10.0, ge=0, le=100)
    successRate: SuccessRate | None = None



# -- sidecar mode ----------------------------------------------------------------------


class SidecarConfig(MeshModel):
    """``meshgate sidecar``: one service instance's inbound and outbound listeners."""

    service: str = Field("", description="The service this instance belongs to (set by the "
                                         "command line)")
    appPort: int = Field(0, ge=0, le=65535, description="Port of the local app (command line)")
    appHost: str = Field("127.0.0.1", description="Host of the local app")
    inboundPort: int = Field(15006, ge=0, le=65535, description="Traffic for this instance")
    outboundPort: int = Field(15001, ge=0, le=65535,
                              description="The app's calls to other services")
    bind: str = Field("127.0.0.1", description="Address both listeners bind")
    address: str = Field("127.0.0.1", description="Address registered for this instance")
    instanceId: str = Field("", description="Instance id in the registry (command line)")
    zone: str = ""
    version: str = ""
    tags: list[str] = Field(default_factory=list)
    weight: int = Field(1, ge=1, le=128, description="Balancing weight of this instance")
    ttl: Millis = Field(10000, description="Registration TTL; heartbeats every third of it")
    selfRegister: bool = Field(True, description="Register this instance in the registry")
    registry: str | None = Field(None, description="Registry URL (default $MESHGATE_REGISTRY)")
    tokenFile: str | None = Field(
        None, description="File holding this service's registry join token (default "
                          "$MESHGATE_JOIN_TOKEN)")
    appHealthPath: str | None = Field(
        None, description="HTTP path checking the local app (default: a TCP connect)")
    appHealthInterval: Millis = Field(1000, description="How often the local app is checked")
    drainDelay: Millis = Field(500, description="After deregistering on SIGTERM, keep serving "
                                                 "this long before draining (callers update)")
    adminPort: int | None = Field(None, ge=0, le=65535,
                                  description="Admin API (/metrics, /clusters) on bind:port")
    outbound: dict[str, Any] = Field(
        default_factory=dict,
        description="serviceEndpoint settings (retry, loadBalancer, healthCheck, timeouts, "
                    "outlierDetection, circuitBreakers) for every service called outbound")

    @field_validator("outbound")
    @classmethod
    def _outbound(cls, value: dict[str, Any]) -> dict[str, Any]:
        """Checked now as the serviceEndpoint it becomes on a service's first call."""
        from meshgate.config.model import ServiceEndpoint
        probe = {**value, "discovery": {"type": "registry", "service": "probe"}}
        try:
            ServiceEndpoint.model_validate(probe)
        except ValidationError as exc:
            raise_errors("outbound", relocate(exc, (), ServiceEndpoint))
        return value
