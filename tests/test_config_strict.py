"""Typos are errors: unknown keys anywhere, with file, line and the key meant.

Every case runs ``meshgate validate`` as a user would and expects exit 2 and
one ``FILE:LINE: FIELD: MESSAGE`` line per problem, the first naming the typo.
Express Gateway's documented keys (and the Node options it passed through)
still validate, as do its starter configs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

DATA = Path(__file__).parent / "data" / "eg-starters"

GATEWAY = textwrap.dedent("""\
    http:
      port: 8080
    apiEndpoints:
      api:
        host: '*'
        paths: /ip
    serviceEndpoints:
      httpbin:
        url: https://httpbin.org
    policies:
      - proxy
    pipelines:
      default:
        apiEndpoints:
          - api
        policies:
          - proxy:
              - action:
                  serviceEndpoint: httpbin
    """)


def validate(directory: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("MESHGATE_CONFIG_DIR",
                                                             "EG_CONFIG_DIR")}
    return subprocess.run([sys.executable, "-m", "meshgate", "validate", str(directory)],
                          capture_output=True, text=True, env=env, timeout=60)


def line_of(text: str, needle: str) -> int:
    return next(n for n, line in enumerate(text.splitlines(), 1) if needle in line)


def edit(old: str, new: str) -> str:
    assert old in GATEWAY
    return GATEWAY.replace(old, new)


# (gateway.config.yml, system.config.yml or None, file with the typo, line needle,
#  field, message)
CASES: dict[str, tuple[str, str | None, str, str, str, str]] = {
    "pipeline-for-pipelines": (
        edit("pipelines:", "pipeline:"), None, "gateway", "pipeline:", "pipeline",
        "unknown key; did you mean 'pipelines'?"),
    "path-for-paths": (
        edit("paths: /ip", "path: /ip"), None, "gateway", "path: /ip", "apiEndpoints.api.path",
        "unknown key; did you mean 'paths'?"),
    "misspelled-serviceEndpoints": (
        edit("serviceEndpoints:", "serviceEndpionts:"), None, "gateway", "serviceEndpionts:",
        "serviceEndpionts", "unknown key; did you mean 'serviceEndpoints'?"),
    "unknown-top-level-key": (
        GATEWAY + "logging:\n  level: debug\n", None, "gateway", "logging:", "logging",
        "unknown key; expected one of: http, https, admin, apiEndpoints"),
    "unknown-name-in-policies": (
        edit("  - proxy\n", "  - proxy\n  - key-auht\n"), None, "gateway", "- key-auht",
        "policies[1]", "unknown policy 'key-auht'; did you mean 'key-auth'?"),
    "typo-in-an-action": (
        edit("serviceEndpoint: httpbin", "serviceEndpoint: httpbin\n"
             "              changeOrgin: true"), None, "gateway", "changeOrgin",
        "pipelines.default.policies[0].proxy[0].action.changeOrgin",
        "unknown key; did you mean 'changeOrigin'?"),
    "typo-in-an-action's-proxyOptions": (
        edit("serviceEndpoint: httpbin", "serviceEndpoint: httpbin\n"
             "              proxyOptions: {changeOrign: true}"), None, "gateway", "changeOrign",
        "pipelines.default.policies[0].proxy[0].action.proxyOptions.changeOrign",
        "unknown key; did you mean 'changeOrigin'?"),
    "typo-in-a-pipeline": (
        edit("    policies:\n      - proxy:", "    policy:\n      - proxy:"), None, "gateway",
        "policy:", "pipelines.default.policy", "unknown key; did you mean 'policies'?"),
    "typo-in-a-serviceEndpoint": (
        edit("url: https://httpbin.org", "url: https://httpbin.org\n    proxyOption: {}"),
        None, "gateway", "proxyOption:", "serviceEndpoints.httpbin.proxyOption",
        "unknown key; did you mean 'proxyOptions'?"),
    "typo-in-http": (
        edit("  port: 8080", "  port: 8080\n  hostnme: 0.0.0.0"), None, "gateway", "hostnme",
        "http.hostnme", "unknown key; did you mean 'hostname'?"),
    "typo-in-https-options": (
        GATEWAY + "https:\n  port: 8443\n  tls: {}\n  options:\n    minVerison: TLSv1.2\n",
        None, "gateway", "minVerison", "https.options.minVerison",
        "unknown key; did you mean 'minVersion'?"),
    "typo-in-sidecar-outbound": (
        GATEWAY + "sidecar:\n  outbound:\n    retyr: {numRetries: 2}\n", None, "gateway",
        "retyr", "sidecar.outbound.retyr", "unknown key; did you mean 'retry'?"),
    "plugins-in-gateway-config": (
        GATEWAY + "plugins:\n  example: {}\n", None, "gateway", "plugins:", "plugins",
        "Express Gateway's JavaScript plugins cannot run in meshgate"),
    "unknown-key-in-system-config": (
        GATEWAY, "db:\n  redis:\n    emulate: true\n    namspace: EG\n", "system",
        "namspace", "db.redis.namspace", "unknown key; did you mean 'namespace'?"),
    "unknown-section-in-system-config": (
        GATEWAY, "cripto:\n  cipherKey: x\n", "system", "cripto", "cripto",
        "unknown key; did you mean 'crypto'?"),
    "typo-in-session-cookie": (
        GATEWAY, "session:\n  secret: s\n  cookie:\n    maxage: 1000\n", "system", "maxage",
        "session.cookie.maxage", "unknown key; did you mean 'maxAge'?"),
    "plugins-in-system-config": (
        GATEWAY, "plugins:\n  express-gateway-plugin-example:\n    param1: x\n", "system",
        "plugins:", "plugins", "Express Gateway's JavaScript plugins cannot run in meshgate"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_typo_exits_2_with_file_line_field_and_the_key_meant(tmp_path: Path, case: str) -> None:
    gateway, system, where, needle, field, message = CASES[case]
    (tmp_path / "gateway.config.yml").write_text(gateway)
    if system is not None:
        (tmp_path / "system.config.yml").write_text(system)
    result = validate(tmp_path)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""
    first = result.stderr.splitlines()[0]
    path = tmp_path / f"{where}.config.yml"
    text = path.read_text()
    assert f"{path}:{line_of(text, needle)}: {field}: {message}" in first, first


def test_the_plugins_message_says_how_meshgate_plugins_work(tmp_path: Path) -> None:
    (tmp_path / "gateway.config.yml").write_text(GATEWAY)
    (tmp_path / "system.config.yml").write_text("plugins:\n  rewrite: {}\n")
    message = validate(tmp_path).stderr
    for words in ("cannot run", "Python packages", "entry points", "docs/plugins.md"):
        assert words in message, message


def test_an_empty_plugins_section_is_fine(tmp_path: Path) -> None:
    (tmp_path / "gateway.config.yml").write_text(GATEWAY)
    (tmp_path / "system.config.yml").write_text("plugins:\n")
    assert validate(tmp_path).returncode == 0


@pytest.mark.parametrize("starter", ["basic", "getting-started", "default"])
def test_eg_starters_still_validate(starter: str) -> None:
    result = validate(DATA / starter)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""


EVERY_EG_KEY = textwrap.dedent("""\
    http:
      port: 8080
      hostname: 127.0.0.1
    https:
      port: 8443
      hostname: 127.0.0.1
      tls:
        "*.example.com": {key: k.pem, cert: c.pem, ca: [ca.pem]}
        default: {key: k.pem, cert: c.pem}
      options: {minVersion: TLSv1.2, honorCipherOrder: true, requestCert: false}
    admin:
      port: 9876
      host: localhost
      hostname: localhost
      backlog: 511
    apiEndpoints:
      api:
        - host: '*.example.com'
          paths: ['/v1/*']
          methods: GET, POST
          scopes: [read]
        - hostRegex: '^api\\\\.'
          pathRegex: '^/v2/.*$'
    serviceEndpoints:
      one:
        url: http://127.0.0.1:9
        proxyOptions:
          changeOrigin: true
          xfwd: true
          secure: false
          headers: {x-a: b}
          cookieDomainRewrite: example.com
          selfHandleResponse: false
          proxyTimeout: 1000
      many:
        urls: [http://127.0.0.1:9, http://127.0.0.1:10]
    policies: [proxy, key-auth, cors, rate-limit, log]
    pipelines:
      default:
        apiEndpoint: api
        policies:
          - proxy:
              - action: {serviceEndpoint: one}
    """)

EVERY_SYSTEM_KEY = textwrap.dedent("""\
    db:
      redis:
        emulate: true
        namespace: EG
        host: localhost
        port: 6379
        username: u
        password: p
        db: 0
        sentinels: [{host: s1, port: 26379}]
        name: mymaster
        tls: {keyFile: k, certFile: c, caFile: ca}
        keyPrefix: eg
        connectTimeout: 1000
        maxRetriesPerRequest: 3
    crypto:
      cipherKey: sensitiveKey
      algorithm: aes256
      saltRounds: 10
    session:
      secret: keyboard cat
      resave: false
      saveUninitialized: false
      name: sid
      rolling: true
      cookie: {maxAge: 60000, secure: true, httpOnly: true, sameSite: lax, path: /}
    accessTokens:
      tokenType: jwt
      timeToExpiry: 7200000
      issuer: me
      audience: [a, b]
      subject: s
      algorithm: HS256
      secretOrPrivateKey: ssst
    refreshTokens:
      timeToExpiry: 7200000
    authorizationCodes:
      timeToExpiry: 300000
    cli:
      url: http://localhost:9876
    """)


def test_every_documented_eg_key_is_accepted(tmp_path: Path) -> None:
    (tmp_path / "gateway.config.yml").write_text(EVERY_EG_KEY)
    (tmp_path / "system.config.yml").write_text(EVERY_SYSTEM_KEY)
    result = validate(tmp_path)
    assert result.returncode == 0, result.stderr


# -- the schema is as strict as the loader --------------------------------------------------
def _schema(*args: str) -> dict[str, Any]:
    done = subprocess.run([sys.executable, "-m", "meshgate", "schema", *args],
                          capture_output=True, text=True, check=True, timeout=60)
    schema: dict[str, Any] = json.loads(done.stdout)
    return schema


def _open_objects(node: Any, at: str = "#") -> list[str]:
    """Where an object schema with properties still admits other keys."""
    found: list[str] = []
    if isinstance(node, dict):
        if "properties" in node and node.get("additionalProperties", True) is not False:
            found.append(at)
        for key, value in node.items():
            found.extend(_open_objects(value, f"{at}/{key}"))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            found.extend(_open_objects(value, f"{at}/{i}"))
    return found


def test_schema_rejects_unknown_keys_where_the_loader_does() -> None:
    gateway = _schema()
    assert gateway["additionalProperties"] is False
    assert _open_objects(gateway) == []
    defs = gateway["$defs"]
    for name in ("ApiEndpoint", "ServiceEndpoint", "ProxyOptions", "Pipeline", "HttpConfig",
                 "HttpsConfig", "AdminConfig", "TlsCertificate"):
        assert defs[name]["additionalProperties"] is False, name
    assert "proxy" in gateway["properties"]["policies"]["anyOf"][0]["enum"]
    system = _schema("--system")
    assert system["title"] == "system.config.yml"
    assert _open_objects(system) == []
    assert system["properties"]["plugins"]["maxProperties"] == 0
