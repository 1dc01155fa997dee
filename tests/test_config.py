"""Config loading: EG starter configs, env substitution, JSON, models and located errors."""

from __future__ import annotations

import json
import os
import textwrap
from pathlib import Path

import pytest
from pydantic import BaseModel, ConfigDict

from meshgate.config.errors import format_path
from meshgate.config.loader import (
    ConfigError,
    LoadedConfig,
    find_config_dir,
    json_schema,
    load_config,
    parse_gateway,
)
from meshgate.config.model import (
    ApiEndpoint,
    ConditionUse,
    GatewayConfig,
    PolicyUse,
    ServiceEndpoint,
    StepUse,
    SystemConfig,
)
from meshgate.policies import POLICIES, PolicySpec

DATA = Path(__file__).parent / "data" / "eg-starters"
EG_PACKAGE = Path(os.environ.get("EG_PACKAGE_DIR", "/tmp/node_modules/express-gateway"))


# -- policies to validate against ----------------------------------------------
class _Proxy(BaseModel):
    model_config = ConfigDict(extra="forbid")
    serviceEndpoint: str
    changeOrigin: bool | None = None


class _Terminate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    statusCode: int = 400
    message: str = "Terminated"


class _Log(BaseModel):
    model_config = ConfigDict(extra="forbid")
    message: str = "${req.method} ${req.originalUrl}"


class _Headers(BaseModel):
    model_config = ConfigDict(extra="forbid")
    headersPrefix: str = ""
    forwardHeaders: dict[str, str] = {}


@pytest.fixture(autouse=True, scope="module")
def _policies() -> None:
    """Stand-ins for the real policies, only for those not written yet."""
    known = set(POLICIES.names())   # loads the real ones first
    stand_ins = {"proxy": _Proxy, "terminate": _Terminate, "log": _Log, "headers": _Headers}
    for name, params in stand_ins.items():
        if name not in known:
            POLICIES.add(PolicySpec(name, params, lambda p, ctx: (lambda ex: None)))


# -- helpers -------------------------------------------------------------------
def write(directory: Path, text: str, name: str = "gateway.config.yml") -> Path:
    path = directory / name
    path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
    return path


def line_of(path: Path, needle: str, nth: int = 1) -> int:
    """1-based line of the nth line of ``path`` containing ``needle``."""
    hits = [n for n, line in enumerate(path.read_text().splitlines(), 1) if needle in line]
    return hits[nth - 1]


def fail(directory: Path, env: dict[str, str] | None = None) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_config(directory, env=env or {})
    return info.value


BASE = """
http:
  port: 8080
apiEndpoints:
  api:
    host: localhost
    paths: /ip
serviceEndpoints:
  httpbin:
    url: https://httpbin.org
policies: [proxy, log, terminate]
"""


def gateway(directory: Path, pipelines: str, base: str = BASE) -> Path:
    return write(directory, textwrap.dedent(base).lstrip("\n")
                 + "pipelines:\n" + textwrap.indent(textwrap.dedent(pipelines), "  "))


# -- EG starter configs ----------------------------------------------------------
@pytest.mark.parametrize("starter", ["basic", "getting-started", "default"])
def test_eg_starter_configs_validate_unchanged(starter: str) -> None:
    loaded = load_config(DATA / starter, env={})
    assert isinstance(loaded, LoadedConfig)
    assert loaded.gateway_path == DATA / starter / "gateway.config.yml"
    assert loaded.system_path == DATA / starter / "system.config.yml"
    assert loaded.gateway.http is not None and loaded.gateway.http.port == 8080
    assert loaded.gateway.admin is not None
    assert (loaded.gateway.admin.port, loaded.gateway.admin.host) == (9876, "localhost")
    assert loaded.system.db.redis is not None and loaded.system.db.redis.emulate is True
    assert loaded.system.db.redis.namespace == "EG"
    assert loaded.system.crypto.saltRounds == 10
    assert loaded.system.session["secret"] == "keyboard cat"


def test_basic_starter_has_empty_sections() -> None:
    gw = load_config(DATA / "basic", env={}).gateway
    assert gw.apiEndpoints == {} and gw.serviceEndpoints == {} and gw.pipelines == {}
    assert "rate-limit" in gw.policies   # whitelisted names need not be implemented


def test_getting_started_starter_details() -> None:
    loaded = load_config(DATA / "getting-started", env={})
    (endpoint,) = loaded.gateway.apiEndpoints["api"]
    assert (endpoint.host, endpoint.paths, endpoint.methods) == ("localhost", ["/ip"], None)
    assert loaded.gateway.serviceEndpoints["httpbin"].targets == ["https://httpbin.org"]
    (use,) = loaded.gateway.pipelines["default"].policies
    assert use.name == "proxy" and len(use.steps) == 1
    assert use.steps[0].condition is None
    assert use.steps[0].action.serviceEndpoint == "httpbin"      # type: ignore[attr-defined]
    assert use.steps[0].action.changeOrigin is True              # type: ignore[attr-defined]
    assert loaded.system.accessTokens.timeToExpiry == 7200000


def test_default_starter_uses_env_defaults_and_single_step_form() -> None:
    loaded = load_config(DATA / "default", env={})
    assert loaded.gateway.http is not None and loaded.gateway.http.port == 8080
    (use,) = loaded.gateway.pipelines["adminAPI"].policies
    assert use.steps[0].action.serviceEndpoint == "backend"      # type: ignore[attr-defined]
    assert loaded.system.cli.url == "http://localhost:9876"
    env = {"EG_HTTP_PORT": "9090", "EG_DB_EMULATE": "false"}
    loaded = load_config(DATA / "default", env=env)
    assert loaded.gateway.http is not None and loaded.gateway.http.port == 9090
    assert loaded.system.db.redis is not None and loaded.system.db.redis.emulate is False
    assert loaded.system.uses_redis


@pytest.mark.skipif(not EG_PACKAGE.is_dir(), reason="npm package express-gateway not installed")
@pytest.mark.parametrize("starter,source", [
    ("basic", "bin/generators/gateway/templates/basic/config"),
    ("getting-started", "bin/generators/gateway/templates/getting-started/config"),
    ("default", "lib/config"),
])
def test_starter_copies_are_unchanged(starter: str, source: str) -> None:
    for name in ("gateway.config.yml", "system.config.yml"):
        assert (DATA / starter / name).read_bytes() == (EG_PACKAGE / source / name).read_bytes()


# -- a full config ----------------------------------------------------------------
FULL = """
http:
  port: 8080
  hostname: 0.0.0.0
https:
  port: 8443
  tls:
    "*.example.com":
      key: certs/wild.key
      cert: certs/wild.crt
      ca: [certs/ca.crt]
    default:
      key: certs/default.key
      cert: certs/default.crt
admin:
  port: 9999
  hostname: 127.0.0.1
server:
  headersTimeout: 5000
  workers: 4
apiEndpoints:
  api:
    host: '*.example.com'
    paths: ['/v1/*', '/v2/*']
    methods: 'get, Post'
    scopes: admin
  multi:
    - pathRegex: '^/users/(?<id>[0-9]+)$'
      hostRegex: '^(www\\.)?example\\.org$'
    - paths: /single
      methods: [delete, '*']
serviceEndpoints:
  one:
    url: http://localhost:3000/base
    connectTimeout: 1000
    timeout: 0
    pool: {maxConnections: 10, maxIdle: 2, idleTimeout: 5000}
    proxyOptions:
      secure: false
      headers: {x-a: b}
      cookieDomainRewrite: example.com
  many:
    urls: [http://a:1, https://b]
policies: [proxy, log, terminate]
pipelines:
  main:
    apiEndpoints: [api, multi]
    policies:
      - log:
      - terminate: []
      - log:
          - condition:
              name: allOf
              conditions:
                - {name: method, methods: [get, post]}
                - name: not
                  condition: {name: pathExact, path: /health}
            action: {message: "${req.ip} hit"}
          -
      - proxy:
          - condition: {name: hostMatch, pattern: '*.example.com'}
            action: {serviceEndpoint: one, changeOrigin: true}
          - action: {serviceEndpoint: many}
  single:
    apiEndpoint: api
    policies:
      terminate:
        action: {statusCode: 404}
"""


@pytest.fixture()
def full(tmp_path: Path) -> GatewayConfig:
    write(tmp_path, FULL)
    return load_config(tmp_path, env={}).gateway


def test_listeners_and_server_section(full: GatewayConfig) -> None:
    assert full.http is not None and full.http.hostname == "0.0.0.0"
    assert full.https is not None and full.https.port == 8443
    assert set(full.https.tls) == {"*.example.com", "default"}
    assert full.https.tls["*.example.com"].ca == ["certs/ca.crt"]
    assert full.https.tls["default"].ca == []
    assert full.admin is not None and (full.admin.port, full.admin.host) == (9999, "127.0.0.1")
    assert full.server.headersTimeout == 5000 and full.server.workers == 4
    assert full.server.keepAliveTimeout == 75000 and full.server.maxHeaderBytes == 65536
    assert full.server.drainTimeout == 30000


def test_api_endpoints_are_normalised(full: GatewayConfig) -> None:
    (api,) = full.apiEndpoints["api"]
    assert api.paths == ["/v1/*", "/v2/*"]
    assert api.methods == ["GET", "POST"]
    assert api.scopes == ["admin"]
    first, second = full.apiEndpoints["multi"]
    assert first.pathRegex == "^/users/(?P<id>[0-9]+)$"    # JS named group -> Python
    assert first.paths == [] and first.host == "*"
    assert second.paths == ["/single"] and second.methods is None    # '*' = all methods


def test_api_endpoint_defaults() -> None:
    endpoint = ApiEndpoint.model_validate({})
    assert (endpoint.host, endpoint.paths, endpoint.methods, endpoint.scopes) == (
        "*", ["*"], None, [])
    assert endpoint.pathRegex is None and endpoint.hostRegex is None


def test_service_endpoints(full: GatewayConfig) -> None:
    one = full.serviceEndpoints["one"]
    assert one.targets == ["http://localhost:3000/base"]
    assert (one.connectTimeout, one.timeout) == (1000, 0)
    assert (one.pool.maxConnections, one.pool.maxIdle, one.pool.idleTimeout) == (10, 2, 5000)
    assert one.proxyOptions.secure is False and one.proxyOptions.headers == {"x-a": "b"}
    assert one.proxyOptions.cookieDomainRewrite == "example.com"    # http-proxy's, accepted
    many = full.serviceEndpoints["many"]
    assert many.targets == ["http://a:1", "https://b"]
    assert (many.connectTimeout, many.timeout) == (5000, 60000)
    assert (many.pool.maxConnections, many.pool.maxIdle, many.pool.idleTimeout) == (
        1024, 64, 60000)


def test_pipelines_become_policy_uses(full: GatewayConfig) -> None:
    main = full.pipelines["main"]
    assert main.apiEndpoints == ["api", "multi"]
    names = [use.name for use in main.policies]
    assert names == ["log", "terminate", "log", "proxy"]
    assert all(isinstance(use, PolicyUse) for use in main.policies)
    null_log, empty_terminate, log, proxy = main.policies
    # `- log:` (null) and `- terminate: []`: one step, no condition, default action.
    assert len(null_log.steps) == 1 and null_log.steps[0].condition is None
    assert isinstance(null_log.steps[0], StepUse)
    assert isinstance(null_log.steps[0].action, POLICIES.get("log").params)  # type: ignore[union-attr]
    assert empty_terminate.steps[0].action.statusCode == 400    # type: ignore[attr-defined]
    cond = log.steps[0].condition
    assert isinstance(cond, ConditionUse) and cond.name == "allOf"
    method, negated = cond.params.conditions                   # type: ignore[attr-defined]
    assert (method.name, method.params.methods) == ("method", ["GET", "POST"])
    assert negated.name == "not" and negated.params.condition.name == "pathExact"
    assert log.steps[0].action.message == "${req.ip} hit"      # type: ignore[attr-defined]
    assert log.steps[1].condition is None                       # `-` (null step)
    assert proxy.steps[0].condition is not None
    assert proxy.steps[0].condition.name == "hostMatch"
    assert proxy.steps[1].action.serviceEndpoint == "many"      # type: ignore[attr-defined]
    single = full.pipelines["single"]
    assert single.apiEndpoints == ["api"]
    assert single.policies[0].steps[0].action.statusCode == 404  # type: ignore[attr-defined]


def test_conditions_compile_from_config(full: GatewayConfig) -> None:
    cond = full.pipelines["main"].policies[2].steps[0].condition
    assert cond is not None
    predicate = cond.compile()
    assert callable(predicate)


def test_model_dump_round_trips(full: GatewayConfig) -> None:
    dumped = full.model_dump(mode="json", by_alias=True)
    assert dumped["pipelines"]["main"]["policies"][0] == {"log": [{"action": {}}]}
    again = GatewayConfig.model_validate(dumped)
    assert again.model_dump(mode="json") == full.model_dump(mode="json")
    json.dumps(dumped)


def test_missing_system_file_gives_eg_defaults(tmp_path: Path) -> None:
    gateway(tmp_path, "{}\n")
    loaded = load_config(tmp_path, env={})
    assert loaded.system_path is None
    system = loaded.system
    assert system == SystemConfig()
    assert system.db.redis is None and not system.uses_redis
    assert (system.crypto.cipherKey, system.crypto.algorithm) == ("sensitiveKey", "aes256")
    assert system.accessTokens.tokenType == "opaque"
    assert system.accessTokens.timeToExpiry == 720000
    assert system.refreshTokens.timeToExpiry == 720000
    assert system.authorizationCodes.timeToExpiry == 300000
    assert system.plugins == {} and system.session == {} and system.cli.url is None


def test_system_config_fields(tmp_path: Path) -> None:
    gateway(tmp_path, "{}\n")
    write(tmp_path, """
        db:
          redis:
            host: redis.local
            port: 6380
            password: 12345
            db: 2
            namespace: MG
            sentinels: [{host: s1, port: 26379}, {host: s2}]
            name: mymaster
            keyPrefix: an-ioredis-option
            username: meshgate
        accessTokens:
          tokenType: jwt
          audience: [a, b]
          secretOrPrivateKeyFile: key.pem
        plugins: {}
        cli: {url: http://admin:9876}
        """, "system.config.yml")
    system = load_config(tmp_path, env={}).system
    redis = system.db.redis
    assert redis is not None and system.uses_redis
    assert (redis.host, redis.port, redis.password, redis.db) == ("redis.local", 6380, "12345", 2)
    assert redis.sentinels is not None and [s.port for s in redis.sentinels] == [26379, 26379]
    assert redis.keyPrefix == "an-ioredis-option" and redis.username == "meshgate"
    assert system.accessTokens.tokenType == "jwt" and system.accessTokens.audience == ["a", "b"]
    assert system.plugins == {}
    assert system.cli.url == "http://admin:9876"


# -- environment substitution ---------------------------------------------------------
def test_env_substitution(tmp_path: Path) -> None:
    path = gateway(tmp_path, """
        default:
          apiEndpoints: [api]
          policies:
            - log:
                action: {message: "${req.ip} ${consumer.id} ${GREETING}"}
            - proxy:
                action: {serviceEndpoint: "${SE:-httpbin}"}
        """)
    text = path.read_text().replace("port: 8080", "port: ${PORT}  # ${NOT_SET_IN_COMMENT}")
    path.write_text(text.replace("paths: /ip", "paths: /ip\n    scopes: ['$${SCOPE}']"))
    gw = load_config(tmp_path, env={"PORT": "8181", "GREETING": "hi"}).gateway
    assert gw.http is not None and gw.http.port == 8181
    log, proxy = gw.pipelines["default"].policies
    assert log.steps[0].action.message == "${req.ip} ${consumer.id} hi"  # type: ignore[attr-defined]
    assert gw.apiEndpoints["api"][0].scopes == ["${SCOPE}"]     # $${...} escapes
    assert proxy.steps[0].action.serviceEndpoint == "httpbin"                    # type: ignore[attr-defined]


def test_env_value_can_be_any_yaml_value(tmp_path: Path) -> None:
    write(tmp_path, "policies: ${POLICIES}\napiEndpoints:\n  api: ${EP:-{host: a.com}}\n")
    gw = load_config(tmp_path, env={"POLICIES": "[proxy, log]"}).gateway
    assert gw.policies == ["proxy", "log"]
    assert gw.apiEndpoints["api"][0].host == "a.com"


def test_unset_env_var_is_an_error_with_line(tmp_path: Path) -> None:
    path = write(tmp_path, "http:\n  port: 8080\n  hostname: ${LISTEN_HOST}\n")
    err = fail(tmp_path)
    assert (err.file, err.line, err.field) == (str(path), 3, None)
    assert "LISTEN_HOST" in err.message and "not set" in err.message
    assert str(err).startswith(f"{path}:3: ")


def test_unset_env_var_in_system_file(tmp_path: Path) -> None:
    write(tmp_path, "{}\n")
    path = write(tmp_path, "db:\n  redis:\n    host: ${REDIS_HOST}\n", "system.config.yml")
    err = fail(tmp_path)
    assert (err.file, err.line) == (str(path), 3)


def test_multiline_env_value_keeps_source_lines(tmp_path: Path) -> None:
    path = write(tmp_path, "apiEndpoints: ${EPS}\nhttp:\n  port: nope\n")
    err = fail(tmp_path, env={"EPS": "\n  a: {host: x}\n  b: {host: y}"})
    assert (err.line, err.field) == (line_of(path, "port: nope"), "http.port")


# -- JSON and other file names -------------------------------------------------------
def test_json_config_files(tmp_path: Path) -> None:
    write(tmp_path, json.dumps({
        "http": {"port": "${PORT:-8080}"},
        "apiEndpoints": {"api": {"host": "localhost"}},
        "serviceEndpoints": {"s": {"url": "http://localhost:1"}},
        "policies": ["proxy"],
        "pipelines": {"p": {"apiEndpoints": ["api"],
                            "policies": [{"proxy": [{"action": {"serviceEndpoint": "s"}}]}]}},
    }, indent=2), "gateway.config.json")
    write(tmp_path, json.dumps({"db": {"redis": {"emulate": True}}}), "system.config.json")
    loaded = load_config(tmp_path, env={})
    assert loaded.gateway_path.name == "gateway.config.json"
    assert loaded.system_path is not None and loaded.system_path.name == "system.config.json"
    assert loaded.gateway.http is not None and loaded.gateway.http.port == 8080


def test_json_errors_have_lines(tmp_path: Path) -> None:
    path = write(tmp_path, json.dumps({"http": {"port": "x"}}, indent=2), "gateway.config.json")
    err = fail(tmp_path)
    assert (err.file, err.line, err.field) == (str(path), line_of(path, '"port"'), "http.port")
    path.write_text('{\n  "http": {\n    "port": 80,\n  }\n}\n')
    err = fail(tmp_path)
    assert err.line == 4 and err.message.startswith("invalid JSON")


def test_yaml_extension_and_parse_gateway(tmp_path: Path) -> None:
    write(tmp_path, "http: {port: 1}\n", "gateway.config.yaml")
    assert load_config(tmp_path, env={}).gateway_path.name == "gateway.config.yaml"
    assert parse_gateway("http: {port: 2}\n").http.port == 2   # type: ignore[union-attr]


# -- finding the directory -------------------------------------------------------------
def test_find_config_dir(tmp_path: Path) -> None:
    other = tmp_path / "other"
    other.mkdir()
    assert find_config_dir(str(tmp_path), env={"MESHGATE_CONFIG_DIR": str(other)}) == tmp_path
    env = {"MESHGATE_CONFIG_DIR": str(other), "EG_CONFIG_DIR": str(tmp_path)}
    assert find_config_dir(None, env=env) == other
    assert find_config_dir(None, env={"EG_CONFIG_DIR": str(tmp_path)}) == tmp_path
    with pytest.raises(ConfigError, match="MESHGATE_CONFIG_DIR"):
        find_config_dir(None, env={})
    with pytest.raises(ConfigError, match="does not exist"):
        find_config_dir(str(tmp_path / "missing"), env={})


def test_missing_gateway_file(tmp_path: Path) -> None:
    err = fail(tmp_path)
    assert err.file == str(tmp_path) and "gateway.config.yml" in err.message


# -- errors name file, line and field ----------------------------------------------------
def test_error_str_format() -> None:
    err = ConfigError("gw.yml", 3, "http.port", "expected an integer, got 'abc'")
    assert str(err) == "gw.yml:3: http.port: expected an integer, got 'abc'"
    assert str(ConfigError("gw.yml", None, None, "boom")) == "gw.yml: boom"
    assert format_path(["https", "tls", "*.x.com", "key"]) == 'https.tls["*.x.com"].key'
    assert format_path(["p", 0, "proxy", 1]) == "p[0].proxy[1]"


def test_type_error_names_line_and_field(tmp_path: Path) -> None:
    path = write(tmp_path, "http:\n  port: abc\n")
    err = fail(tmp_path)
    assert str(err) == f"{path}:2: http.port: expected an integer, got 'abc'"


def test_yaml_syntax_error(tmp_path: Path) -> None:
    path = write(tmp_path, "http:\n  port: 8080\n  bad: [1, 2\nadmin: {}\n")
    err = fail(tmp_path)
    assert err.file == str(path) and err.line is not None and err.line >= 3
    assert err.message.startswith("invalid YAML")


def test_duplicate_key(tmp_path: Path) -> None:
    write(tmp_path, "http:\n  port: 1\n  port: 2\n")
    err = fail(tmp_path)
    assert (err.line, err.field) == (3, "http.port") and "duplicate key" in err.message


def test_top_level_must_be_mapping(tmp_path: Path) -> None:
    write(tmp_path, "- a\n- b\n")
    assert "expected a mapping at the top level" in fail(tmp_path).message


def test_server_section_rejects_unknown_keys(tmp_path: Path) -> None:
    path = write(tmp_path, "server:\n  workers: 2\n  wokrers: 3\n")
    err = fail(tmp_path)
    assert (err.line, err.field) == (line_of(path, "wokrers"), "server.wokrers")
    assert err.message == "unknown key; did you mean 'workers'?"


@pytest.mark.parametrize("body,field,needle,message", [
    ("u:\n    url: ftp://x", "serviceEndpoints.u.url", "ftp://", "http(s) URL"),
    ("u:\n    url: http://", "serviceEndpoints.u.url", "http://", "http(s) URL"),
    ("u:\n    url: http://a\n    urls: [http://b]", "serviceEndpoints.u", "u:",
     "exactly one of 'url' or 'urls'"),
    ("u:\n    proxyOptions: {}", "serviceEndpoints.u", "u:", "exactly one"),
    ("u:\n    urls: [http://a, 'nope']", "serviceEndpoints.u.urls[1]", "urls", "http(s) URL"),
    ("u:\n    url: http://a\n    pool: {maxConnections: 0}",
     "serviceEndpoints.u.pool.maxConnections", "pool", "expected a number >= 1, got 0"),
])
def test_service_endpoint_errors(tmp_path: Path, body: str, field: str, needle: str,
                                 message: str) -> None:
    path = write(tmp_path, "serviceEndpoints:\n  " + body + "\n")
    err = fail(tmp_path)
    assert (err.field, err.line) == (field, line_of(path, needle))
    assert message in err.message


def test_bad_regex(tmp_path: Path) -> None:
    write(tmp_path, "apiEndpoints:\n  api:\n    - host: a\n    - pathRegex: '(['\n")
    err = fail(tmp_path)
    assert (err.field, err.line) == ("apiEndpoints.api[1].pathRegex", 4)
    assert "invalid regular expression" in err.message


def test_unknown_policy(tmp_path: Path) -> None:
    path = gateway(tmp_path, """
        p:
          apiEndpoints: [api]
          policies:
            - log:
            - no-such-policy:
        """)
    err = fail(tmp_path)
    assert (err.field, err.line) == ("pipelines.p.policies[1].no-such-policy",
                                     line_of(path, "no-such-policy"))
    assert err.message.startswith("unknown policy 'no-such-policy'; known: ")
    assert "proxy" in err.message


def test_policy_not_whitelisted(tmp_path: Path) -> None:
    path = gateway(tmp_path, """
        p:
          apiEndpoints: [api]
          policies:
            - headers:
        """)
    err = fail(tmp_path)
    assert (err.field, err.line) == ("pipelines.p.policies[0].headers", line_of(path, "- headers"))
    assert err.message == "policy 'headers' is not in the policies whitelist"


def test_action_param_error_is_located_inside_the_action(tmp_path: Path) -> None:
    path = gateway(tmp_path, """
        p:
          apiEndpoints: [api]
          policies:
            - proxy:
                - action:
                    serviceEndpoint: httpbin
                    changeOrigin: sometimes
        """)
    err = fail(tmp_path)
    assert err.field == "pipelines.p.policies[0].proxy[0].action.changeOrigin"
    assert err.line == line_of(path, "changeOrigin")
    assert "sometimes" in err.message


def test_action_error_in_single_step_form(tmp_path: Path) -> None:
    path = gateway(tmp_path, """
        p:
          apiEndpoints: [api]
          policies:
            - terminate:
                action:
                  statusCode: teapot
        """)
    err = fail(tmp_path)
    assert err.field == "pipelines.p.policies[0].terminate.action.statusCode"
    assert err.line == line_of(path, "statusCode")
    assert err.message == "expected an integer, got 'teapot'"


def test_params_outside_action_are_reported(tmp_path: Path) -> None:
    path = gateway(tmp_path, """
        p:
          apiEndpoints: [api]
          policies:
            - log:
                - message: hello
        """)
    err = fail(tmp_path)
    assert err.field == "pipelines.p.policies[0].log[0].message"
    assert err.line == line_of(path, "message: hello")
    assert "'action'" in err.message


def test_two_policies_in_one_item(tmp_path: Path) -> None:
    path = gateway(tmp_path, """
        p:
          apiEndpoints: [api]
          policies:
            - log:
              terminate:
        """)
    err = fail(tmp_path)
    assert (err.field, err.line) == ("pipelines.p.policies[0]", line_of(path, "- log"))
    assert "one policy per list item" in err.message


@pytest.mark.parametrize("condition,field,needle,message", [
    ("{name: bogus}", "condition.name", "bogus", "unknown condition 'bogus'; known: allOf"),
    ("{path: /x}", "condition.name", "path: /x", "required field is missing"),
    ("{name: pathExact}", "condition.path", "pathExact", "required field is missing"),
    ("{name: pathExact, path: /x, paths: /y}", "condition.paths", "paths: /y",
     "unknown key; did you mean 'path'?"),
    ("{name: method, methods: 'GET POST'}", "condition.methods", "GET POST",
     "expected an HTTP method name"),
    ("\n                  name: allOf\n                  conditions:\n"
     "                    - {name: always}\n                    - {name: pathMatch, pattern: '(['}",
     "condition.conditions[1].pattern", "pattern: '(['", "invalid regular expression"),
    ("\n                  name: not\n                  condition:\n"
     "                    name: oneOf\n                    conditions: [{name: hostMatch}]",
     "condition.condition.conditions[0].pattern", "conditions: [", "required field is missing"),
    ("\n                  name: not\n                  conditions: []",
     "condition.conditions", "conditions: []", "unknown key; did you mean 'condition'?"),
])
def test_condition_errors(tmp_path: Path, condition: str, field: str, needle: str,
                          message: str) -> None:
    path = gateway(tmp_path, f"""
        p:
          apiEndpoints: [api]
          policies:
            - log:
              - condition: {condition}
        """)
    err = fail(tmp_path)
    assert err.field == f"pipelines.p.policies[0].log[0].{field}"
    assert err.line == line_of(path, needle)
    assert message in err.message


def test_unknown_api_endpoint(tmp_path: Path) -> None:
    path = gateway(tmp_path, """
        p:
          apiEndpoints: [api, nope]
          policies: []
        q:
          apiEndpoints: other
          policies: []
        """)
    err = fail(tmp_path)
    assert (err.field, err.line) == ("pipelines.p.apiEndpoints[1]", line_of(path, "nope"))
    assert err.message == "unknown apiEndpoint 'nope'; known: api"
    (second,) = err.errors[1:]
    assert (second.field, second.line) == ("pipelines.q.apiEndpoints", line_of(path, "other"))


def test_unknown_service_endpoint(tmp_path: Path) -> None:
    path = gateway(tmp_path, """
        p:
          apiEndpoints: [api]
          policies:
            - proxy:
                - condition: {name: always}
                  action: {serviceEndpoint: httpbn}
        """)
    err = fail(tmp_path)
    assert err.field == "pipelines.p.policies[0].proxy[0].action.serviceEndpoint"
    assert err.line == line_of(path, "httpbn")
    assert err.message == "unknown serviceEndpoint 'httpbn'; known: httpbin"


def test_system_config_errors(tmp_path: Path) -> None:
    write(tmp_path, "{}\n")
    path = write(tmp_path, "accessTokens:\n  tokenType: paseto\n  timeToExpiry: 1\n",
                 "system.config.yml")
    err = fail(tmp_path)
    assert (err.file, err.line, err.field) == (str(path), 2, "accessTokens.tokenType")
    assert err.message == "expected 'opaque' or 'jwt', got 'paseto'"


def test_all_errors_are_collected(tmp_path: Path) -> None:
    write(tmp_path, "http:\n  port: x\nadmin:\n  port: y\n")
    err = fail(tmp_path)
    assert [e.field for e in err.errors] == ["http.port", "admin.port"]
    assert [e.line for e in err.errors] == [2, 4]


# -- models used directly ------------------------------------------------------------
def test_service_endpoint_model_needs_url_or_urls() -> None:
    assert ServiceEndpoint.model_validate({"url": "http://x"}).targets == ["http://x"]
    with pytest.raises(ValueError, match="exactly one"):
        ServiceEndpoint.model_validate({})


def test_policy_use_serialises_back_to_eg_shape(full: GatewayConfig) -> None:
    proxy = full.pipelines["main"].policies[3]
    dumped = proxy.dump()
    assert dumped["proxy"][0]["condition"] == {"name": "hostMatch", "pattern": "*.example.com"}
    assert dumped["proxy"][1] == {"action": {"serviceEndpoint": "many"}}


# -- JSON Schema ------------------------------------------------------------------------
def test_json_schema_includes_policies_and_conditions() -> None:
    schema = json_schema()
    text = json.dumps(schema)
    assert "x-meshgate-def" not in text
    defs = schema["$defs"]
    assert {"PolicyUse", "Condition", "Pipeline", "ApiEndpoint", "ServiceEndpoint"} <= set(defs)
    assert "proxy" in defs["PolicyUse"]["properties"]
    assert "policy.proxy" in defs
    names = {v["properties"]["name"]["const"] for v in defs["Condition"]["anyOf"]}
    assert {"always", "never", "allOf", "oneOf", "not", "pathExact", "pathMatch",
            "method", "hostMatch"} <= names
    for ref in _refs(schema):
        assert ref.removeprefix("#/$defs/") in defs, ref
    assert set(schema["properties"]) >= {"http", "https", "admin", "apiEndpoints",
                                         "serviceEndpoints", "policies", "pipelines", "server"}


def _refs(node: object) -> list[str]:
    if isinstance(node, dict):
        out = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return out + [r for v in node.values() for r in _refs(v)]
    if isinstance(node, list):
        return [r for v in node for r in _refs(v)]
    return []


def test_tab_indentation_hint(tmp_path: Path) -> None:
    write(tmp_path, "http:\n\tport: 1\n")
    err = fail(tmp_path)
    assert err.line == 2 and "not tabs" in err.message


def test_tab_indented_json_still_has_lines(tmp_path: Path) -> None:
    write(tmp_path, '{\n\t"http": {\n\t\t"port": "x"\n\t}\n}\n', "gateway.config.json")
    err = fail(tmp_path)
    assert (err.line, err.field) == (3, "http.port")
