"""PKCE (RFC 7636) for the oauth2 policy's authorization-code grant.

Theory of operation
-------------------
A public or confidential client makes a random ``code_verifier`` and sends
its ``code_challenge`` with the authorization request: the verifier itself
(``plain``, the default method) or BASE64URL(SHA-256(verifier)) without
padding (``S256``). The authorization server keeps the challenge and method
with the code (``challenge_props``); the token request must then present
the verifier, and ``verifier_error`` says why it does not match, if it does
not. Both values are 43 to 128 characters of ``[A-Za-z0-9-._~]``.

A verifier sent for a code issued without a challenge is an error too
(OAuth 2.1, against PKCE downgrade: an attacker injecting a code obtained
without PKCE into a client that uses it).

Pure functions, no I/O; the comparison takes constant time.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from collections.abc import Mapping
from typing import Any

VALUE = re.compile(r"[A-Za-z0-9\-._~]{43,128}")     # RFC 7636 4.1 and 4.2
METHODS = ("S256", "plain")
CHALLENGE, METHOD = "codeChallenge", "codeChallengeMethod"   # names in the code's props


def challenge_props(challenge: str | None, method: str | None) -> dict[str, str]:
    """The props to keep with a code; ValueError (the reason) for a bad request."""
    if not challenge:
        if method:
            raise ValueError("code_challenge_method without code_challenge")
        return {}
    method = method or "plain"
    if method not in METHODS:
        raise ValueError(f"Unsupported code_challenge_method: {method}")
    # An S256 challenge is an unpadded base64url SHA-256: exactly 43 characters.
    if not VALUE.fullmatch(challenge) or (method == "S256" and len(challenge) != 43):
        raise ValueError("Invalid code_challenge")
    return {CHALLENGE: challenge, METHOD: method}


def s256(verifier: str) -> str:
    digest = hashlib.sha256(verifier.encode("ascii", "replace")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def verifier_error(props: Mapping[str, Any], verifier: str | None) -> str | None:
    """Why ``verifier`` does not redeem a code with these props; None when it does."""
    challenge = props.get(CHALLENGE)
    if challenge is None:
        if verifier is not None:
            return "code_verifier sent, but the authorization request had no code_challenge"
        return None
    if verifier is None:
        return "Missing required parameter: code_verifier"
    if not VALUE.fullmatch(verifier):
        return "Invalid code_verifier"
    derived = s256(verifier) if props.get(METHOD) == "S256" else verifier
    if not hmac.compare_digest(derived.encode("ascii"), str(challenge).encode("ascii",
                                                                               "replace")):
        return "code_verifier does not match the code_challenge"
    return None
