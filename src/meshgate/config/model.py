"""The models of gateway.config.yml (and, re-exported, system.config.yml).

Theory of operation
-------------------
``GatewayConfig.model_validate(data)`` takes the parsed YAML of an Express
Gateway ``gateway.config.yml`` unchanged and returns it normalised:

* ``apiEndpoints``: name -> list of ``ApiEndpoint`` (EG accepts one object);
  ``paths``/``methods``/``scopes`` always lists (``methods`` None = all),
  ``paths`` ``['*']`` when neither paths nor pathRegex is given (EG mounts
  ``*``), regexes rewritten to Python syntax and checked;
* ``serviceEndpoints``: name -> ``ServiceEndpoint`` (exactly one of url/urls,
  each an http(s) URL with a host) plus meshgate's timeouts and pool limits;
* ``pipelines``: name -> ``Pipeline`` whose ``policies`` are ``PolicyUse``
  objects with actions already validated by each policy's params model;
* ``server``: meshgate's listener settings (not an EG section).

After the sections validate on their own, ``_check_references`` checks what
ties them together -- each policy used is in the ``policies`` whitelist, each
pipeline apiEndpoint and each ``serviceEndpoint`` action parameter names one
that exists -- and reports every failure with its location, so the loader
can name the file line of each.

Every section rejects keys it does not declare, EG's included: they declare
what EG documented (and the Node options EG passed through), so a typo such
as ``pipeline:`` or ``serviceEndpionts:`` is an error at its own line, named
with the key it was probably meant to be (``keys.py``). So is a name in the
``policies`` whitelist that no policy has, and EG's ``plugins``.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    AliasChoices,
    BaseModel,
    BeforeValidator,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails

from meshgate.config.base import (
    EGModel,
    MeshModel,
    Millis,
    Port,
    StrList,
    as_list,
    custom_error,
    empty_if_none,
    raise_errors,
    relocate,
)
from meshgate.config.jsregex import to_python_regex
from meshgate.config.keys import NODE_TLS_OPTIONS, check_keys, suggestion
from meshgate.config.mesh import (
    CircuitBreakers,
    HealthCheck,
    LoadBalancer,
    LoadBalancerField,
    OutlierDetection,
    Retry,
    SidecarConfig,
)
from meshgate.config.pipeline import ConditionUse, Pipeline, PolicyUse, StepUse
from meshgate.config.system import SystemConfig
from meshgate.plugins import PluginError
from meshgate.policies import POLICIES

__all__ = [
    "AdminConfig", "ApiEndpoint", "ConditionUse", "GatewayConfig", "Http2Settings", "HttpConfig",
    "HttpsConfig", "Pipeline", "PolicyUse", "PoolConfig", "ProxyOptions", "ServerSettings",
    "ServiceEndpoint", "StepUse", "SystemConfig", "TlsCertificate",
]

Regex = Annotated[str, AfterValidator(to_python_regex)]


# -- listeners ---------------------------------------------------------------
class HttpConfig(EGModel):
    port: Port
    hostname: str | None = None


class TlsCertificate(EGModel):
    """Paths of one domain's PEM files (the domain key may be ``*.x.com`` or ``default``)."""

    key: str
    cert: str
    ca: StrList = Field(default_factory=list)
    protocols: list[Literal["h2", "http/1.1"]] | None = Field(
        None, min_length=1,
        description="ALPN protocols offered with this certificate (meshgate; default both)")


def _node_tls_options(value: dict[str, Any]) -> dict[str, Any]:
    return check_keys(value, NODE_TLS_OPTIONS, "options")


class HttpsConfig(EGModel):
    port: Port
    hostname: str | None = None
    tls: Annotated[dict[str, TlsCertificate], BeforeValidator(empty_if_none)] = Field(
        default_factory=dict)
    options: Annotated[dict[str, Any], AfterValidator(_node_tls_options)] = Field(
        default_factory=dict, description="Node TLS server options (accepted, not used)",
        json_schema_extra={"propertyNames": {"enum": [*sorted(NODE_TLS_OPTIONS)]}})


class AdminConfig(EGModel):
    port: Port = 9876
    host: str = "localhost"
    hosts: list[str] = Field(default_factory=list, description="Other Host names it answers to")
    hostname: str | None = Field(None, exclude=True, description="EG's older name of host")
    backlog: int | None = None

    @model_validator(mode="after")
    def _hostname(self) -> AdminConfig:
        # EG's ``hostname`` wins over ``host`` when both are given.
        if self.hostname is not None:
            self.host = self.hostname
        return self


class PathNormalization(MeshModel):
    """How a request path is normalised once, before routing (Envoy's options)."""

    normalize: bool = True               # RFC 3986 dot segments, %-encoded unreserved decoded
    encodedSlashes: Literal["reject", "keep", "unescape"] = "reject"   # %2F and %5C
    mergeSlashes: bool = False


class Http2Settings(MeshModel):
    """HTTP/2 downstream (h2c by prior knowledge, ALPN h2): SETTINGS and abuse limits."""

    enabled: bool = True
    maxConcurrentStreams: Annotated[int, Field(ge=1, le=2**31 - 1)] = 100
    initialWindowSize: Annotated[int, Field(ge=65535, le=2**31 - 1)] = 65535   # per stream
    connectionWindowSize: Annotated[int, Field(ge=65535, le=2**31 - 1)] = 1048576
    maxFrameSize: Annotated[int, Field(ge=16384, le=16777215)] = 16384
    maxHeaderListSize: Annotated[int, Field(ge=1024)] = 65536
    # Abuse limits: beyond them the connection gets GOAWAY ENHANCE_YOUR_CALM.
    maxResetsPerSecond: Annotated[int, Field(ge=1)] = 200        # RST_STREAM sent or received
    maxControlFramesPerSecond: Annotated[int, Field(ge=1)] = 200  # SETTINGS + PING to ack
    streamBufferBytes: Annotated[int, Field(ge=16384)] = 65536   # response held per stream


class ServerSettings(MeshModel):
    """meshgate's listener limits (a ``server:`` section EG does not have)."""

    headersTimeout: Annotated[int, Field(ge=1)] = 10000    # ms; late head -> 408
    keepAliveTimeout: Millis = 75000
    maxHeaderBytes: Annotated[int, Field(ge=1024)] = 65536
    drainTimeout: Millis = 30000
    workers: Annotated[int, Field(ge=1)] = 1
    maxHeaders: Annotated[int, Field(ge=1, le=10000)] = 100    # Envoy's default; more -> 431
    bodyTimeout: Millis = 30000          # ms without request-body bytes -> 408; 0 = none
    bufferRequestBody: Annotated[int, Field(ge=0)] = 65536     # bytes read before proxying
    pathNormalization: PathNormalization = Field(default_factory=lambda: PathNormalization())
    http2: Http2Settings = Field(default_factory=lambda: Http2Settings())


# -- apiEndpoints ------------------------------------------------------------
def _host(value: Any) -> Any:
    return "*" if value is None else value


def _methods(value: Any) -> Any:
    """'GET, post' / ['get'] -> ['GET', 'POST'] / ['GET']; '*' or nothing -> None (all)."""
    if value is None:
        return None
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, list):
        return value
    out: list[Any] = []
    for item in items:
        if not isinstance(item, str):
            out.append(item)
        elif item.strip() == "*":
            return None
        elif item.strip():
            out.append(item.strip().upper())
    return out or None


class ApiEndpoint(EGModel):
    host: Annotated[str, BeforeValidator(_host)] = "*"
    paths: StrList = Field(default_factory=list)
    methods: Annotated[
        list[str] | None, BeforeValidator(_methods, json_schema_input_type=str | list[str]),
    ] = None
    scopes: StrList = Field(default_factory=list)
    pathRegex: Regex | None = None
    hostRegex: Regex | None = None

    @model_validator(mode="after")
    def _default_paths(self) -> ApiEndpoint:
        if not self.paths and self.pathRegex is None:
            self.paths = ["*"]      # EG mounts '*': every path
        return self


# -- serviceEndpoints --------------------------------------------------------
def _http_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"expected an http(s) URL with a host, got {value!r}")
    try:
        parts.port  # noqa: B018 -- raises on a bad port
    except ValueError:
        raise ValueError(f"invalid port in URL {value!r}") from None
    return value


HttpUrl = Annotated[str, AfterValidator(_http_url)]


class ProxyOptions(EGModel):
    """http-proxy options EG passed through, and the proxy policy's own parameters
    (EG merged the two). Those meshgate honours are typed; the rest are accepted."""

    target: str | dict[str, Any] | None = None
    changeOrigin: bool | None = None
    secure: bool | None = None
    xfwd: bool | None = None
    ws: bool | None = None
    prependPath: bool | None = None
    ignorePath: bool | None = None
    toProxy: bool | None = None
    followRedirects: bool | None = None
    autoRewrite: bool | None = None
    preserveHeaderKeyCase: bool | None = None
    hostRewrite: str | None = None
    protocolRewrite: str | None = None
    localAddress: str | None = None
    auth: str | None = None
    headers: dict[str, str] | None = None
    proxyTimeout: Millis | None = None
    timeout: Millis | None = None
    stripPath: bool | None = None
    strategy: str | None = None
    forward: str | dict[str, Any] | None = None
    agent: Any = None
    ssl: dict[str, Any] | None = None
    cookieDomainRewrite: str | dict[str, Any] | bool | None = None
    cookiePathRewrite: str | dict[str, Any] | bool | None = None
    selfHandleResponse: bool | None = None
    buffer: Any = None


class PoolConfig(MeshModel):
    maxConnections: Annotated[int, Field(ge=1)] = 1024    # per endpoint
    maxIdle: Annotated[int, Field(ge=0)] = 64             # per endpoint
    # Request bodies streaming upstream at once (per worker, whole cluster);
    # None: half of maxConnections. Others wait, unread, for a slot.
    maxUploads: Annotated[int, Field(ge=1)] | None = None
    idleTimeout: Millis = 60000


class UpstreamHttp2(MeshModel):
    """HTTP/2 to the endpoints (``protocol: h2 | h2c | auto``), as Envoy's
    ``http2_protocol_options``: streams share a few connections per endpoint."""

    maxConcurrentStreams: int = Field(
        100, ge=1, le=2**31 - 1,
        description="Streams per connection (the lower of this and the peer's SETTINGS)")
    maxConnections: int = Field(4, ge=1, description="Connections per endpoint")
    initialStreamWindowSize: int = Field(
        1 << 20, ge=65535, le=2**31 - 1,
        description="Bytes a response stream may send before we acknowledge them")
    initialConnectionWindowSize: int = Field(
        16 << 20, ge=65535, le=2**31 - 1,
        description="Bytes all streams of a connection may send before we acknowledge them")


class WeightedUrl(MeshModel):
    url: HttpUrl
    weight: int = Field(1, ge=1, le=128, description="Share of traffic relative to the others")
    zone: str = Field("", description="Locality, for zone-aware balancing")


UrlItem = HttpUrl | WeightedUrl


class ServiceEndpoint(EGModel):
    url: HttpUrl | None = None
    urls: list[UrlItem] | None = None
    proxyOptions: Annotated[ProxyOptions, BeforeValidator(empty_if_none)] = Field(
        default_factory=ProxyOptions)
    connectTimeout: Millis = 5000       # 0 = none
    timeout: Millis = 60000             # response timeout of one attempt; 0 = none
    requestTimeout: Millis = Field(0, description="Overall deadline covering retries; 0 = none")
    pool: Annotated[PoolConfig, BeforeValidator(empty_if_none)] = Field(
        default_factory=PoolConfig)
    protocol: Literal["http1", "h2", "h2c", "auto"] = Field(
        "http1", description="To the endpoints: HTTP/1.1, HTTP/2 over TLS (ALPN h2), "
                             "HTTP/2 cleartext (prior knowledge), or ALPN's choice on https")
    http2: Annotated[UpstreamHttp2, BeforeValidator(empty_if_none)] = Field(
        default_factory=lambda: UpstreamHttp2.model_validate({}))
    discovery: dict[str, Any] | None = Field(
        None, description="Where endpoints come from: {type: static|registry|dns|etcd, ...}")
    healthCheck: HealthCheck | None = None
    loadBalancer: LoadBalancerField = Field(default_factory=lambda: LoadBalancer.model_validate({}))
    retry: Retry | None = None
    circuitBreakers: CircuitBreakers | None = None
    outlierDetection: OutlierDetection | None = None

    @field_validator("urls")
    @classmethod
    def _some_urls(cls, value: list[Any] | None) -> list[Any] | None:
        if value is not None and not value:
            raise ValueError("expected at least one URL")
        return value

    @field_validator("discovery")
    @classmethod
    def _discovery(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is None:
            return None
        from meshgate.discovery import DISCOVERY, validate_discovery
        try:
            params = validate_discovery(value)
        except ValidationError as exc:
            spec = DISCOVERY.get(str(value.get("type", "static")))
            raise_errors("discovery", relocate(exc, (), spec.params if spec else None))
        return {"type": value.get("type", "static"), **params.model_dump(mode="json")}

    @model_validator(mode="after")
    def _one_of_url_urls(self) -> ServiceEndpoint:
        dynamic = self.discovery is not None and self.discovery["type"] != "static"
        if self.url is not None and self.urls is not None:
            raise ValueError("expected exactly one of 'url' or 'urls'")
        if not dynamic and self.url is None and self.urls is None:
            raise ValueError("expected exactly one of 'url' or 'urls' (or a discovery provider)")
        check = self.healthCheck
        if check is not None and check.type == "grpc" and self.protocol not in ("h2", "h2c"):
            raise ValueError(f"healthCheck type 'grpc' needs protocol 'h2' or 'h2c' (gRPC is "
                             f"HTTP/2), got protocol {self.protocol!r}")
        wanted = {"h2": "https", "h2c": "http"}.get(self.protocol)
        for url in self.targets if wanted else []:
            if urlsplit(url).scheme != wanted:
                raise ValueError(f"protocol {self.protocol!r} expects {wanted}:// urls, "
                                 f"got {url!r}")
        return self

    @property
    def targets(self) -> list[str]:
        """The static endpoint URLs, whichever key gave them."""
        return [url for url, _, _ in self.weighted_targets]

    @property
    def weighted_targets(self) -> list[tuple[str, int, str]]:
        """``(url, weight, zone)`` of each static endpoint."""
        if self.url is not None:
            return [(self.url, 1, "")]
        return [(u, 1, "") if isinstance(u, str) else (u.url, u.weight, u.zone)
                for u in self.urls or []]


# -- the whole file ----------------------------------------------------------
def _pipelines(value: Any) -> Any:
    if value is None:
        return {}
    if isinstance(value, list):     # EG also accepted a list; names are indices
        return {str(i): p for i, p in enumerate(value)}
    return value


ApiEndpointList = Annotated[
    list[ApiEndpoint], BeforeValidator(as_list, json_schema_input_type=ApiEndpoint
                                       | list[ApiEndpoint]),
]


class GatewayConfig(EGModel):
    http: HttpConfig | None = None
    https: HttpsConfig | None = None
    admin: AdminConfig | None = None        # absent: no Admin API (as EG)
    apiEndpoints: Annotated[dict[str, ApiEndpointList], BeforeValidator(empty_if_none)] = Field(
        default_factory=dict)
    serviceEndpoints: Annotated[
        dict[str, ServiceEndpoint], BeforeValidator(empty_if_none)] = Field(default_factory=dict)
    policies: StrList = Field(default_factory=list)
    pipelines: Annotated[dict[str, Pipeline], BeforeValidator(_pipelines)] = Field(
        default_factory=dict)
    server: Annotated[ServerSettings, BeforeValidator(empty_if_none)] = Field(
        default_factory=ServerSettings)
    sidecar: SidecarConfig | None = Field(
        None, description="Sidecar mode (set by `meshgate sidecar`)")

    @field_validator("policies")
    @classmethod
    def _known_policies(cls, names: list[str]) -> list[str]:
        errors: list[InitErrorDetails] = []
        for i, name in enumerate(names):
            try:
                found = POLICIES.known(name)
            except PluginError as exc:
                errors.append(custom_error("policy_plugin", str(exc), (i,), name))
                continue
            if not found:
                errors.append(custom_error(
                    "unknown_policy", f"unknown policy {name!r}; "
                    + suggestion(name, POLICIES.names()), (i,), name))
        raise_errors("policies", errors)
        return names

    @model_validator(mode="after")
    def _check_references(self) -> GatewayConfig:
        errors: list[InitErrorDetails] = []
        for name, pipeline in self.pipelines.items():
            errors.extend(self._pipeline_errors(name, pipeline))
        raise_errors("GatewayConfig", errors)
        return self

    def _pipeline_errors(self, name: str, pipeline: Pipeline) -> list[InitErrorDetails]:
        errors: list[InitErrorDetails] = []
        here = ("pipelines", name)
        for i, endpoint in enumerate(pipeline.apiEndpoints):
            if endpoint not in self.apiEndpoints:
                errors.append(custom_error(
                    "unknown_api_endpoint",
                    f"unknown apiEndpoint {endpoint!r}; known: {_known(self.apiEndpoints)}",
                    (*here, "apiEndpoints", i), endpoint))
        for i, use in enumerate(pipeline.policies):
            at = (*here, "policies", i, use.name)
            if use.name not in self.policies:
                errors.append(custom_error(
                    "policy_not_whitelisted",
                    f"policy {use.name!r} is not in the policies whitelist", at, use.name))
            for j, step in enumerate(use.steps):
                errors.extend(self._service_endpoint_errors(step.action, (*at, j, "action")))
        return errors

    def _service_endpoint_errors(self, action: BaseModel,
                                 at: tuple[str | int, ...]) -> list[InitErrorDetails]:
        out: list[InitErrorDetails] = []
        for field_name, key in _service_endpoint_fields(type(action)):
            value = getattr(action, field_name, None)
            if isinstance(value, str) and value not in self.serviceEndpoints:
                out.append(custom_error(
                    "unknown_service_endpoint",
                    f"unknown serviceEndpoint {value!r}; known: {_known(self.serviceEndpoints)}",
                    (*at, key), value))
        for attr, value in action:      # nested params: a split's entries, a mirror
            items = value if isinstance(value, list) else [value]
            for i, item in enumerate(items):
                if isinstance(item, BaseModel):
                    where = (*at, attr, i) if isinstance(value, list) else (*at, attr)
                    out.extend(self._service_endpoint_errors(item, where))
        return out


def _known(names: dict[str, Any]) -> str:
    return ", ".join(names) or "(none defined)"


_SE_FIELDS: dict[type[BaseModel], list[tuple[str, str]]] = {}


def _service_endpoint_fields(model: type[BaseModel]) -> list[tuple[str, str]]:
    """(attribute, key as written) of every param named ``serviceEndpoint``."""
    found = _SE_FIELDS.get(model)
    if found is None:
        found = []
        for attr, info in model.model_fields.items():
            names = {attr, info.alias}
            choices = info.validation_alias
            if isinstance(choices, str):
                names.add(choices)
            elif isinstance(choices, AliasChoices):
                names.update(c for c in choices.choices if isinstance(c, str))
            if "serviceEndpoint" in names:
                found.append((attr, "serviceEndpoint"))
        _SE_FIELDS[model] = found
    return found
