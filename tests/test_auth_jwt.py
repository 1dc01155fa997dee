"""The jwt policy: HS256 with credential existence, RS256 / ES256 keys, extractors, config."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from meshgate.config.errors import ConfigError
from meshgate.config.loader import load_config
from tests.conftest import Backend
from tests.support.gateway import Gateway, proxy_config
from tests.test_auth_key import Admin, auth_config, auth_pipeline, eventually, upstream_headers

SECRET = "a-shared-secret-of-at-least-32-bytes!"


def _pem_pair(private: Any) -> tuple[bytes, bytes]:
    return (private.private_bytes(serialization.Encoding.PEM,
                                  serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()),
            private.public_key().public_bytes(serialization.Encoding.PEM,
                                              serialization.PublicFormat.SubjectPublicKeyInfo))


RSA_PRIVATE, RSA_PUBLIC = _pem_pair(rsa.generate_private_key(public_exponent=65537,
                                                             key_size=2048))
EC_PRIVATE, EC_PUBLIC = _pem_pair(ec.generate_private_key(ec.SECP256R1()))


def _pipeline(name: str, paths: list[str], action: dict[str, Any],
              scopes: list[str] | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    return auth_pipeline("jwt", name, paths, action, scopes)


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    backend = Backend("backend")
    config = proxy_config(backend.url)
    config["policies"] = ["jwt", "proxy"]
    pipelines: dict[str, tuple[list[str], dict[str, Any], list[str] | None]] = {
        "hs": (["/hs/*"], {"secretOrPublicKey": SECRET}, None),
        "scoped": (["/scoped/*"], {"secretOrPublicKey": SECRET}, ["jwt-read"]),
        "rs": (["/rs/*"], {"secretOrPublicKeyFile": "keys/public.pem", "audience": "api",
                           "issuer": "https://issuer.example", "algorithms": ["RS256"],
                           "checkCredentialExistence": False}, ["orders"]),
        "es": (["/es/*"], {"secretOrPublicKey": EC_PUBLIC.decode(),
                           "checkCredentialExistence": False}, None),
        "query": (["/query/*"], {"secretOrPublicKey": SECRET, "jwtExtractor": "query",
                                 "jwtExtractorField": "token",
                                 "checkCredentialExistence": False}, None),
        "header": (["/header/*"], {"secretOrPublicKey": SECRET, "jwtExtractor": "header",
                                   "jwtExtractorField": "X-JWT",
                                   "checkCredentialExistence": False}, None),
        "scheme": (["/scheme/*"], {"secretOrPublicKey": SECRET, "jwtExtractor": "authScheme",
                                   "jwtExtractorField": "JWT",
                                   "checkCredentialExistence": False}, None),
    }
    config["apiEndpoints"], config["pipelines"] = {}, {}
    for name, (paths, action, scopes) in pipelines.items():
        endpoint, pipeline = _pipeline(name, paths, action, scopes)
        config["apiEndpoints"][name] = endpoint
        config["pipelines"][name] = pipeline
    directory = tmp_path_factory.mktemp("jwt")
    (directory / "keys").mkdir()
    (directory / "keys" / "public.pem").write_bytes(RSA_PUBLIC)
    gateway = Gateway(directory, config, start=False)
    gateway.start()
    yield gateway
    gateway.stop()
    backend.stop()


@pytest.fixture(scope="module")
def admin(gw: Gateway) -> Admin:
    return Admin(gw)


def hs(claims: dict[str, Any], key: str | bytes = SECRET, alg: str = "HS256") -> str:
    return jwt.encode({"iat": int(time.time()), **claims}, key, algorithm=alg)


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


def test_hs256_token_subject_must_be_an_active_jwt_credential(gw: Gateway,
                                                              admin: Admin) -> None:
    user = admin.user()
    cred = admin.credential(user["id"], "jwt")
    r = httpx.get(gw.url + "/hs/echo")
    assert r.status_code == 401
    assert r.headers["www-authenticate"] == 'Bearer realm="Users"'
    r = httpx.get(gw.url + "/hs/echo", headers=bearer(hs({"sub": cred["keyId"]})))
    assert r.status_code == 200, r.text
    assert upstream_headers(r)["eg-consumer-id"] == [user["id"]]
    unsigned = jwt.encode({"sub": cred["keyId"]}, None, algorithm="none")  # type: ignore[arg-type]
    for token in (hs({"sub": "no-such-key"}), hs({"name": "no subject"}), "not.a.jwt",
                  hs({"sub": cred["keyId"]}, key="another-secret-of-at-least-32-bytes"),
                  hs({"sub": cred["keyId"], "exp": int(time.time()) - 10}),
                  unsigned):
        r = httpx.get(gw.url + "/hs/echo", headers=bearer(token))
        assert r.status_code == 401, token
        assert r.headers["www-authenticate"] == 'Bearer realm="Users", error="invalid_token"'
    token = hs({"sub": cred["keyId"]})
    admin.set_status("jwt", cred["keyId"], False)
    eventually(lambda: httpx.get(gw.url + "/hs/echo", headers=bearer(token)).status_code
               == 401)


def test_credential_scopes_apply(gw: Gateway, admin: Admin) -> None:
    admin.scopes("jwt-read")
    user = admin.user()
    plain = admin.credential(user["id"], "jwt")
    scoped = admin.credential(user["id"], "jwt", scopes=["jwt-read"])
    assert httpx.get(gw.url + "/scoped/echo",
                     headers=bearer(hs({"sub": plain["keyId"]}))).status_code == 403
    assert httpx.get(gw.url + "/scoped/echo",
                     headers=bearer(hs({"sub": scoped["keyId"]}))).status_code == 200


def test_rs256_key_file_audience_issuer_and_token_scopes(gw: Gateway) -> None:
    good = {"sub": "svc-42", "aud": "api", "iss": "https://issuer.example",
            "scope": "orders profile", "exp": int(time.time()) + 60}
    r = httpx.get(gw.url + "/rs/echo", headers=bearer(jwt.encode(good, RSA_PRIVATE, "RS256")))
    assert r.status_code == 200, r.text
    assert upstream_headers(r)["eg-consumer-id"] == ["svc-42"]
    for bad in ({**good, "aud": "other"}, {k: v for k, v in good.items() if k != "iss"},
                {**good, "exp": int(time.time()) - 1}):
        r = httpx.get(gw.url + "/rs/echo", headers=bearer(jwt.encode(bad, RSA_PRIVATE, "RS256")))
        assert r.status_code == 401, bad
    # scopes come from the token when no credential is looked up
    no_scope = {**good, "scope": "profile"}
    r = httpx.get(gw.url + "/rs/echo", headers=bearer(jwt.encode(no_scope, RSA_PRIVATE, "RS256")))
    assert r.status_code == 403
    # the public key used as an HMAC secret (algorithm confusion) is refused
    r = httpx.get(gw.url + "/rs/echo", headers=bearer(_hmac_signed(
        {"sub": "evil", "aud": "api", "iss": "https://issuer.example", "scope": "orders"},
        RSA_PUBLIC)))
    assert r.status_code == 401


def _hmac_signed(claims: dict[str, Any], key: bytes) -> str:
    """An HS256 token signed with any bytes (PyJWT refuses PEM keys as HMAC secrets)."""
    def part(data: dict[str, Any]) -> str:
        return jwt.utils.base64url_encode(json.dumps(data).encode()).decode()
    signing_input = f"{part({'alg': 'HS256', 'typ': 'JWT'})}.{part(claims)}"
    digest = hmac.new(key, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{jwt.utils.base64url_encode(digest).decode()}"


def test_es256_inline_public_key(gw: Gateway) -> None:
    token = jwt.encode({"sub": "edge"}, EC_PRIVATE, algorithm="ES256")
    r = httpx.get(gw.url + "/es/echo", headers=bearer(token))
    assert r.status_code == 200
    assert upstream_headers(r)["eg-consumer-id"] == ["edge"]
    wrong = jwt.encode({"sub": "edge"}, RSA_PRIVATE, algorithm="RS256")
    assert httpx.get(gw.url + "/es/echo", headers=bearer(wrong)).status_code == 401


def test_extractors_query_header_and_scheme(gw: Gateway) -> None:
    token = hs({"sub": "someone"})
    assert httpx.get(gw.url + f"/query/echo?token={token}").status_code == 200
    assert httpx.get(gw.url + "/query/echo", headers=bearer(token)).status_code == 401
    assert httpx.get(gw.url + "/header/echo", headers={"x-jwt": token}).status_code == 200
    assert httpx.get(gw.url + "/header/echo").status_code == 401
    r = httpx.get(gw.url + "/scheme/echo", headers={"authorization": f"jwt {token}"})
    assert r.status_code == 200
    r = httpx.get(gw.url + "/scheme/echo", headers=bearer(token))
    assert r.status_code == 401
    assert r.headers["www-authenticate"] == 'JWT realm="Users"'


# -- config validation -----------------------------------------------------------------------

def _invalid(tmp_path: Path, action: dict[str, Any]) -> ConfigError:
    config = proxy_config("http://127.0.0.1:9", policies=[{"jwt": [{"action": action}]}])
    (tmp_path / "gateway.config.yml").write_text(yaml.safe_dump(config))
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path, env={})
    return info.value


@pytest.mark.parametrize(("action", "message"), [
    ({}, "exactly one of secretOrPublicKey and secretOrPublicKeyFile"),
    ({"secretOrPublicKey": "a", "secretOrPublicKeyFile": "b"}, "exactly one of"),
    ({"secretOrPublicKey": "a", "jwtExtractor": "query"}, "needs jwtExtractorField"),
    ({"secretOrPublicKey": "a", "jwtExtractor": "cookie"}, "jwtExtractor"),
    ({"secretOrPublicKey": RSA_PUBLIC.decode(), "algorithms": ["HS256"]},
     "cannot be used with this PEM key"),
    ({"secretOrPublicKey": "plain secret", "algorithms": ["RS256"]},
     "cannot be used with an HMAC secret"),
    ({"secretOrPublicKey": "-----BEGIN PUBLIC KEY-----\ngarbage\n-----END PUBLIC KEY-----"},
     "cannot load the PEM key"),
])
def test_invalid_jwt_params_are_config_errors(tmp_path: Path, action: dict[str, Any],
                                              message: str) -> None:
    error = _invalid(tmp_path, action)
    assert message in str(error), str(error)
    assert "jwt" in str(error)


def test_starter_style_config_validates(tmp_path: Path) -> None:
    config = auth_config("http://127.0.0.1:9", [
        {"jwt": [{"action": {"secretOrPublicKey": "secretKey",
                             "checkCredentialExistence": False}}]}])
    (tmp_path / "gateway.config.yml").write_text(yaml.safe_dump(config))
    assert load_config(tmp_path, env={}).gateway.pipelines["main"]
