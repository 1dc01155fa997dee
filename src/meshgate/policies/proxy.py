"""proxy: forward the exchange to a serviceEndpoint (Express Gateway's proxy policy).

Parameters follow Express Gateway (which passed them to node-http-proxy):
``serviceEndpoint``, ``changeOrigin`` (Host becomes the target's), ``stripPath``
(drop the apiEndpoint path up to its first ``:`` or ``*``), ``prependPath``
(put the target url's path in front, default on), ``ignorePath`` (send only the
target url's path), ``xfwd`` (add X-Forwarded-For/-Proto/-Host; meshgate
defaults it on, as gateways are expected to), ``strategy`` (round-robin),
``timeout`` / ``proxyTimeout`` (response timeout in ms, overriding the
serviceEndpoint's), ``headers`` (constant headers to add). As in Express
Gateway, the serviceEndpoint's ``proxyOptions`` override the action's values,
and the action's own (deprecated) ``proxyOptions`` override both.

The request head for the upstream is built in one pass over the client's
headers: hop-by-hop headers and those named in ``Connection`` are dropped,
``Expect`` is answered by us, an ``eg-request-id`` is added.

Mesh extensions: ``split`` (weighted serviceEndpoints, pinned by header or
cookie match, optionally sticky by ``stickyBy``) instead of
``serviceEndpoint``; ``mirror`` (a percentage of requests copied to another
serviceEndpoint, responses discarded); ``requestTimeout`` (overall deadline,
covering retries); ``websocket`` (``true`` or ``{idleTimeout, maxTunnels}``:
WebSocket handshakes are tunnelled, see ``_websocket.py``; off by default, as
in nginx and Envoy, and then a handshake is served as a plain request);
``grpcWeb`` (``auto``: gRPC-Web requests to a serviceEndpoint of protocol
``h2``/``h2c`` go on as gRPC, see ``protocol/grpc_web.py``; ``true`` also for
``auto``; ``false`` passes them through, for upstreams that speak gRPC-Web).
Clusters with retries, breakers, outlier detection or a
latency-aware balancer send through a ``Call`` (``upstream/call.py``);
others with one pool write. The per-request part is ``_forward.py``.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator

from meshgate.config.base import raise_errors, relocate
from meshgate.config.mesh import HashOn
from meshgate.config.model import ProxyOptions
from meshgate.policies import POLICIES, Action, BuildContext, PolicySpec
from meshgate.policies._forward import Forward, GrpcWebForward
from meshgate.policies._split import Mirror, Split
from meshgate.policies._websocket import WebSocketParams, with_websocket


class SplitMatch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    headers: dict[str, str] = Field(default_factory=dict,
                                    description="Request headers that pin to this target")
    cookies: dict[str, str] = Field(default_factory=dict,
                                    description="Cookies that pin to this target")


class SplitTarget(BaseModel):
    model_config = ConfigDict(extra="forbid")

    serviceEndpoint: str = Field(description="A version of the service")
    weight: int = Field(ge=0, description="Relative share of requests")
    match: SplitMatch | None = Field(None, description="Requests matching go here, always")


class MirrorParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    serviceEndpoint: str = Field(description="Where copies go (responses are discarded)")
    percentage: float = Field(100.0, ge=0, le=100, description="Share of requests copied")


def _known_proxy_options(value: Any) -> Any:
    """Checked as a serviceEndpoint's ``proxyOptions`` (typos are errors); kept a mapping."""
    if isinstance(value, dict):
        try:
            ProxyOptions.model_validate(value)
        except ValidationError as exc:
            raise_errors("proxyOptions", relocate(exc, (), ProxyOptions))
    return value


class ProxyParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    serviceEndpoint: str | None = Field(
        None, description="Name of the serviceEndpoint to forward to (or use split)")
    split: list[SplitTarget] | None = Field(
        None, description="Weighted serviceEndpoints for staged rollouts")
    stickyBy: HashOn | None = Field(None, description="split: keep a client on one target")
    mirror: MirrorParams | None = Field(None, description="Copy requests to a serviceEndpoint")
    requestTimeout: int | None = Field(None, ge=0,
                                       description="Overall deadline in ms, covering retries")
    changeOrigin: bool | None = Field(None, description="Rewrite Host to the target's")
    stripPath: bool | None = Field(None, description="Strip the apiEndpoint path prefix")
    prependPath: bool | None = Field(None, description="Prepend the target url's path")
    ignorePath: bool | None = Field(None, description="Send only the target url's path")
    xfwd: bool | None = Field(None, description="Add X-Forwarded-For/-Proto/-Host")
    secure: bool | None = Field(None, description="Verify upstream TLS certificates")
    strategy: str = Field("round-robin", description="How to choose among `urls`")
    timeout: int | None = Field(None, ge=0, description="Response timeout in ms")
    proxyTimeout: int | None = Field(None, ge=0, description="Alias of timeout")
    headers: dict[str, str] = Field(default_factory=dict, description="Headers to add")
    websocket: bool | WebSocketParams = Field(
        False, description="Tunnel WebSocket handshakes (true, or idleTimeout / maxTunnels)")
    grpcWeb: bool | Literal["auto"] = Field(
        "auto", description="Translate gRPC-Web requests to gRPC: auto (h2/h2c "
                            "serviceEndpoints), true, or false (pass them through)")
    proxyOptions: Annotated[dict[str, Any], BeforeValidator(
        _known_proxy_options, json_schema_input_type=ProxyOptions)] = Field(
        default_factory=dict, description="Deprecated in EG: overrides the above")

    @model_validator(mode="after")
    def _one_target(self) -> ProxyParams:
        if (self.serviceEndpoint is None) == (self.split is None):
            raise ValueError("expected exactly one of 'serviceEndpoint' or 'split'")
        if self.split is not None and not any(t.weight for t in self.split):
            raise ValueError("split: expected at least one target with a weight above 0")
        return self


def forward_to(params: ProxyParams, service: str, ctx: BuildContext) -> Forward:
    """The Forward for ``service``: one that translates gRPC-Web where ``grpcWeb`` says so."""
    protocol = ctx.clusters[service].protocol
    mode = params.grpcWeb
    if mode is True and protocol == "http1":
        raise ValueError(f"grpcWeb: true needs serviceEndpoint {service!r} to speak HTTP/2 "
                         "(protocol h2, h2c or auto); it has protocol http1")
    if mode is True or (mode == "auto" and protocol in ("h2", "h2c")):
        return GrpcWebForward(params, service, ctx)
    return Forward(params, service, ctx)


def build_proxy(params: ProxyParams, ctx: BuildContext) -> Action:
    action: Action
    if params.split is not None:
        split = Split(params, [(forward_to(params, t.serviceEndpoint, ctx), t)
                               for t in params.split], ctx)
        action, choose = split, split.choose
    else:
        assert params.serviceEndpoint is not None
        forward = forward_to(params, params.serviceEndpoint, ctx)
        action, choose = forward, lambda ex: forward
    if params.mirror is not None and params.mirror.percentage > 0:
        shadow = forward_to(params, params.mirror.serviceEndpoint, ctx)
        action = Mirror(action, shadow, params.mirror.percentage, ctx)
    return with_websocket(action, choose, params.websocket, ctx)


POLICIES.add(PolicySpec(
    name="proxy",
    params=ProxyParams,
    build=build_proxy,
    description="Forward the request to a serviceEndpoint",
))
