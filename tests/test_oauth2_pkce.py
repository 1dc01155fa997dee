"""PKCE (RFC 7636) and single-use codes in the oauth2 policy's authorization-code grant.

Real gateways (one with two workers sharing the SQLite store, one with
``requirePkce``) and real HTTP: the authorize redirect carries the code, the
token endpoint checks the ``code_verifier`` against the kept challenge, and
ten clients racing with one code get exactly one set of tokens.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
import threading
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from tests.conftest import Backend
from tests.support.gateway import Gateway
from tests.test_auth_key import Admin, auth_config, basic
from tests.test_auth_oauth2 import REDIRECT, bearer, consent, token_call


def s256(verifier: str) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()) \
        .rstrip(b"=").decode()


def new_verifier() -> str:
    return secrets.token_urlsafe(48)[:64]        # 64 chars of the unreserved set


def start(tmp_path_factory: pytest.TempPathFactory, upstream: str, name: str,
          action: dict[str, Any] | None, workers: int = 1) -> Gateway:
    config = auth_config(upstream, [{"oauth2": [{"action": action}] if action else None}],
                         scopes=["orders"])
    return Gateway(tmp_path_factory.mktemp(name), config, workers=workers)


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory, backend_mod: Backend) -> Iterator[Gateway]:
    # Two workers: concurrent exchanges of one code land in two processes.
    gateway = start(tmp_path_factory, backend_mod.url, "pkce", None, workers=2)
    yield gateway
    gateway.stop()


@pytest.fixture(scope="module")
def strict_gw(tmp_path_factory: pytest.TempPathFactory, backend_mod: Backend
              ) -> Iterator[Gateway]:
    gateway = start(tmp_path_factory, backend_mod.url, "pkce-required", {"requirePkce": True})
    yield gateway
    gateway.stop()


class Party:
    """A client app with an oauth2 credential, and a user who signs in to authorize it."""

    def __init__(self, gw: Gateway) -> None:
        self.gw = gw
        admin = Admin(gw)
        admin.scopes("orders")
        app = admin.app(admin.user()["id"], redirectUri=REDIRECT)
        admin.credential(app["id"], "oauth2", secret="client-secret", scopes=["orders"])
        self.client_id = app["id"]
        self.auth = (app["id"], "client-secret")
        user = admin.user()
        admin.credential(user["id"], "basic-auth", password="pw")
        self.login = basic(user["username"], "pw")

    def query(self, **extra: str) -> dict[str, str]:
        return {"response_type": "code", "client_id": self.client_id,
                "redirect_uri": REDIRECT, "scope": "orders", **extra}

    def authorize(self, **extra: str) -> httpx.Response:
        return httpx.get(self.gw.url + "/oauth2/authorize", params=self.query(**extra),
                         headers=self.login, timeout=30)

    def code(self, **extra: str) -> str:
        r = consent(self.gw, self.query(**extra), self.login)
        assert r.status_code == 302, r.text
        return parse_qs(urlsplit(r.headers["location"]).query)["code"][0]

    def exchange(self, code: str, **extra: str) -> httpx.Response:
        return token_call(self.gw, {"grant_type": "authorization_code", "code": code,
                                    "redirect_uri": REDIRECT, **extra}, self.auth)


@pytest.fixture(scope="module")
def party(gw: Gateway) -> Party:
    return Party(gw)


def assert_invalid_grant(r: httpx.Response) -> None:
    # oauth2orize's status for invalid_grant, which meshgate keeps (see _oauth2_server)
    assert r.status_code == 403, r.text
    assert r.json()["error"] == "invalid_grant"


def test_s256_needs_the_matching_verifier(gw: Gateway, party: Party) -> None:
    verifier = new_verifier()
    code = party.code(code_challenge=s256(verifier), code_challenge_method="S256")
    assert_invalid_grant(party.exchange(code))                        # no verifier
    assert_invalid_grant(party.exchange(code, code_verifier=new_verifier()))
    assert_invalid_grant(party.exchange(code, code_verifier=s256(verifier)))
    assert_invalid_grant(party.exchange(code, code_verifier="short"))
    r = party.exchange(code, code_verifier=verifier)     # refusals left the code usable
    assert r.status_code == 200, r.text
    body = r.json()
    assert "refresh_token" in body
    assert httpx.get(gw.url + "/echo", headers=bearer(body["access_token"])).status_code == 200
    assert_invalid_grant(party.exchange(code, code_verifier=verifier))   # used


@pytest.mark.parametrize("method", [None, "plain"])
def test_plain_is_the_default_method(party: Party, method: str | None) -> None:
    verifier = new_verifier()
    extra = {"code_challenge_method": method} if method else {}
    code = party.code(code_challenge=verifier, **extra)
    assert_invalid_grant(party.exchange(code, code_verifier=s256(verifier)[:43] + "x" * 10))
    assert_invalid_grant(party.exchange(code))
    assert party.exchange(code, code_verifier=verifier).status_code == 200


def test_code_without_challenge_works_and_refuses_a_verifier(party: Party) -> None:
    code = party.code()
    # OAuth 2.1: a verifier for a code issued without a challenge is a downgrade sign
    assert_invalid_grant(party.exchange(code, code_verifier=new_verifier()))
    assert party.exchange(code).status_code == 200


@pytest.mark.parametrize("params", [
    {"code_challenge": "a" * 43, "code_challenge_method": "S512"},
    {"code_challenge": "too-short"},
    {"code_challenge": "a" * 129},
    {"code_challenge": "a" * 42 + "+"},
    {"code_challenge": "a" * 50, "code_challenge_method": "S256"},
    {"code_challenge_method": "S256"},
])
def test_bad_challenges_are_invalid_requests(party: Party, params: dict[str, str]) -> None:
    r = party.authorize(**params)
    assert r.status_code == 400, r.text
    assert r.json()["error"] == "invalid_request"


def test_require_pkce(strict_gw: Gateway) -> None:
    party = Party(strict_gw)
    r = party.authorize()
    assert r.status_code == 400 and r.json()["error"] == "invalid_request", r.text
    assert "code_challenge" in r.json()["error_description"]
    verifier = new_verifier()
    code = party.code(code_challenge=s256(verifier), code_challenge_method="S256")
    assert_invalid_grant(party.exchange(code))
    assert party.exchange(code, code_verifier=verifier).status_code == 200


def race(party: Party, form: dict[str, str], racers: int) -> list[httpx.Response]:
    """``racers`` token requests, each on a connection of its own, sent at one moment."""
    barrier = threading.Barrier(racers)
    results: list[httpx.Response] = []
    lock = threading.Lock()

    def racer() -> None:
        with httpx.Client(timeout=30) as http:
            request = http.build_request("POST", party.gw.url + "/oauth2/token",
                                         headers=basic(*party.auth), data=form)
            barrier.wait()
            response = http.send(request)
            response.read()
        with lock:
            results.append(response)

    threads = [threading.Thread(target=racer) for _ in range(racers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    return results


@pytest.mark.parametrize("pkce", [False, True])
def test_concurrent_exchanges_of_one_code_get_tokens_once(party: Party, pkce: bool) -> None:
    racers = 10
    for _ in range(3):
        verifier = new_verifier()
        form = {"grant_type": "authorization_code", "redirect_uri": REDIRECT}
        if pkce:
            form["code"] = party.code(code_challenge=s256(verifier),
                                      code_challenge_method="S256")
            form["code_verifier"] = verifier
        else:
            form["code"] = party.code()
        results = race(party, form, racers)
        assert len(results) == racers
        statuses = sorted(r.status_code for r in results)
        assert statuses == [200] + [403] * (racers - 1), [r.text for r in results]
        for r in results:
            if r.status_code != 200:
                assert r.json()["error"] == "invalid_grant"
