"""jwt: authenticate by a signed JSON Web Token (EG's jwt policy, via PyJWT).

Theory of operation
-------------------
EG's parameters and defaults: exactly one of ``secretOrPublicKey`` (an HMAC
secret or a PEM public key / certificate) and ``secretOrPublicKeyFile``
(relative to the config folder) -- EG never fell back to a credential's own
secret, and neither do we; ``jwtExtractor`` ``authBearer`` (default:
``Authorization: Bearer <jwt>``), ``authScheme`` (``Authorization:
<jwtExtractorField> <jwt>``), ``header`` (the whole value of header
``jwtExtractorField``) or ``query`` (parameter ``jwtExtractorField``);
``audience`` and ``issuer`` (checked when given), ``algorithms`` (default,
as jsonwebtoken chose: HS256/384/512 for a secret, the family of the key
for a PEM key -- RS*/PS* for RSA, ES* for EC), ``checkCredentialExistence``
(default true: the token's ``sub`` must be the keyId of an active jwt
credential of an active consumer, whose scopes then count) and
``passThrough``.

With ``checkCredentialExistence: false`` the consumer is the token itself:
id ``sub``, type ``external``, scopes from its ``scope`` (space-separated)
or ``scopes`` claim. EG checked no apiEndpoint scopes for jwt at all;
meshgate does (403), from whichever scopes apply.

Hot path: a verified token is remembered until its ``exp`` (signature,
audience and issuer cannot change), so a repeated token costs a dict
look-up plus the store's cached credential look-up; a new one costs one
signature check, no coroutine. Only a credential missing from the store's
cache awaits.
"""

from __future__ import annotations

import math
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import jwt
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.serialization import load_pem_private_key, load_pem_public_key
from pydantic import Field, model_validator

from meshgate.config.base import ParamsModel
from meshgate.policies import POLICIES, BuildContext, PolicySpec
from meshgate.policies._auth import (
    REALM,
    Gate,
    Identity,
    Memo,
    auth_scheme_value,
    identity,
    of_credential,
    query_param,
    shared_store,
)
from meshgate.store import MISS

if TYPE_CHECKING:
    from collections.abc import Awaitable

    from meshgate.protocol.exchange import Exchange
    from meshgate.store.model import Credential

# EG configs often carry short HMAC secrets; PyJWT would warn on every request.
warnings.filterwarnings("ignore", category=jwt.InsecureKeyLengthWarning)

HMAC = ("HS256", "HS384", "HS512")
RSA = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512")
ECDSA = ("ES256", "ES384", "ES512")
EDDSA = ("EdDSA",)
Algorithm = Literal["HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "PS256", "PS384",
                    "PS512", "ES256", "ES384", "ES512", "EdDSA"]
Extractor = Literal["header", "query", "authScheme", "authBearer"]
_VERIFIED_SIZE = 10000


class JwtParams(ParamsModel):
    passThrough: bool = Field(False, description="Go on anonymous instead of answering 401")
    secretOrPublicKey: str | None = Field(None, description="HMAC secret or PEM public key")
    secretOrPublicKeyFile: str | None = Field(
        None, description="File holding the secret or PEM key (relative to the config folder)")
    jwtExtractor: Extractor = Field("authBearer", description="Where the token is read from")
    jwtExtractorField: str | None = Field(
        None, description="Header name (header), query parameter (query) or scheme (authScheme)")
    audience: str | list[str] | None = Field(None, description="Required `aud`")
    issuer: str | None = Field(None, description="Required `iss`")
    algorithms: list[Algorithm] | None = Field(None, description="Accepted algorithms")
    checkCredentialExistence: bool = Field(
        True, description="`sub` must be the keyId of an active jwt credential")

    @model_validator(mode="after")
    def _consistent(self) -> JwtParams:
        if (self.secretOrPublicKey is None) == (self.secretOrPublicKeyFile is None):
            raise ValueError("give exactly one of secretOrPublicKey and secretOrPublicKeyFile")
        if self.jwtExtractor != "authBearer" and not self.jwtExtractorField:
            raise ValueError(f"jwtExtractor {self.jwtExtractor} needs jwtExtractorField "
                             "(the header name, query parameter or scheme)")
        if self.secretOrPublicKey is not None:
            verify_key(self.secretOrPublicKey.encode(),
                       list(self.algorithms) if self.algorithms else None)
        return self


def verify_key(material: bytes, algorithms: list[str] | None) -> tuple[Any, list[str]]:
    """The key PyJWT verifies with and the algorithms allowed with it.

    A PEM public key, certificate or private key (its public half) becomes
    a key object, loaded once; anything else is an HMAC secret, used as is.
    Algorithms of another family than the key's are refused here, so a
    public key can never be used as an HMAC secret (algorithm confusion).
    """
    stripped = material.strip()
    key: Any
    if stripped.startswith(b"-----BEGIN"):
        try:
            if b"CERTIFICATE" in stripped.split(b"\n", 1)[0]:
                key = x509.load_pem_x509_certificate(stripped).public_key()
            elif b"PRIVATE KEY" in stripped.split(b"\n", 1)[0]:
                key = load_pem_private_key(stripped, None).public_key()
            else:
                key = load_pem_public_key(stripped)
        except (ValueError, TypeError) as exc:
            raise ValueError(f"cannot load the PEM key: {exc}") from None
        if isinstance(key, rsa.RSAPublicKey):
            family: tuple[str, ...] = RSA
        elif isinstance(key, ec.EllipticCurvePublicKey):
            family = ECDSA
        elif isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
            family = EDDSA
        else:
            raise ValueError(f"unsupported key type {type(key).__name__}")
    else:
        key, family = material, HMAC
    if algorithms is None:
        return key, list(family)
    wrong = [a for a in algorithms if a not in family]
    if wrong:
        kind = "an HMAC secret" if family is HMAC else "this PEM key"
        raise ValueError(f"algorithms {', '.join(wrong)} cannot be used with {kind}")
    return key, list(algorithms)


def read_key_material(inline: str | None, file: str | None, config_dir: Path | None) -> bytes:
    if inline is not None:
        return inline.encode()
    assert file is not None
    path = Path(file).expanduser()
    if not path.is_absolute() and config_dir is not None:
        path = Path(config_dir) / path
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ValueError(f"cannot read key file {path}: {exc.strerror}") from None


def claim_scopes(claims: dict[str, Any]) -> list[str]:
    """Scopes of a token: ``scope`` (space-separated, RFC 8693) or ``scopes`` (a list)."""
    for key in ("scope", "scopes"):
        value = claims.get(key)
        if isinstance(value, str):
            return value.split()
        if isinstance(value, list):
            return [str(s) for s in value]
    return []


class JwtAuth:
    """The jwt policy; oauth2 reuses it for JWT access tokens (see ``oauth2``).

    ``id_claim`` names the consumer; ``lookup`` is the credential type the
    store must hold under that id (None: trust the token); ``token_scopes``
    takes scopes from the token even when the credential is looked up.
    """

    def __init__(self, params: JwtParams, ctx: BuildContext, *, policy: str = "jwt",
                 key: tuple[Any, list[str]] | None = None, id_claim: str = "sub",
                 lookup: str | None = "jwt", token_scopes: bool = False) -> None:
        if key is None:
            material = read_key_material(params.secretOrPublicKey, params.secretOrPublicKeyFile,
                                         ctx.config_dir)
            key = verify_key(material, list(params.algorithms) if params.algorithms else None)
        self.key, self.algorithms = key
        self.audience = params.audience
        self.issuer = params.issuer
        self.options = {"verify_aud": params.audience is not None}
        self.decoder = jwt.PyJWT()
        self.extract = _extractor(params.jwtExtractor, params.jwtExtractorField or "")
        self.id_claim = id_claim
        self.lookup_type = lookup if params.checkCredentialExistence else None
        self.token_scopes = token_scopes or self.lookup_type is None
        self.store = shared_store(ctx) if self.lookup_type is not None else None
        scheme = ("Bearer" if params.jwtExtractor != "authScheme"
                  else params.jwtExtractorField or "Bearer")
        self.gate = Gate(policy, params.passThrough, f'{scheme} realm="{REALM}"',
                         f'{scheme} realm="{REALM}", error="invalid_token"')
        self.memo = Memo()
        # token -> (exp deadline, claims, identity when the token alone decides)
        self.verified: dict[str, tuple[float, dict[str, Any], Identity | None]] = {}

    def __call__(self, ex: Exchange) -> bool | Awaitable[bool | None] | None:
        token = self.extract(ex)
        if not token:
            return self.gate.deny(ex)
        entry = self._verify(token)
        if entry is None:
            return self.gate.deny(ex, presented=True)
        who = entry[2]
        if who is not None:
            return self.gate.admit(ex, who)
        claims = entry[1]
        subject = claims.get(self.id_claim)
        if not isinstance(subject, str) or not subject or self.store is None:
            return self.gate.deny(ex, presented=True)
        hit = self.store.cached_lookup(self.lookup_type, subject)
        if hit is MISS:
            return self.gate.settle(ex, self._lookup(subject, claims))
        if hit is None:
            return self.gate.deny(ex, presented=True)
        return self.gate.admit(ex, self._identity(hit, claims))

    def _verify(self, token: str) -> tuple[float, dict[str, Any], Identity | None] | None:
        verified = self.verified
        entry = verified.get(token)
        if entry is not None:
            if entry[0] > time.time():
                return entry
            del verified[token]
        try:
            claims = self.decoder.decode(token, self.key, algorithms=self.algorithms,
                                         audience=self.audience, issuer=self.issuer,
                                         options=self.options)  # type: ignore[arg-type]
        except (jwt.PyJWTError, ValueError, TypeError):
            return None
        if not isinstance(claims, dict):
            return None
        exp = claims.get("exp")
        deadline = float(exp) if isinstance(exp, int | float) else math.inf
        who = None
        if self.lookup_type is None:
            subject = claims.get(self.id_claim)
            subject = None if subject is None else str(subject)
            who = identity(subject, subject, "external", claim_scopes(claims), "jwt")
        if len(verified) >= _VERIFIED_SIZE:
            verified.pop(next(iter(verified)))
        entry = verified[token] = (deadline, claims, who)
        return entry

    def _identity(self, cred: Credential, claims: dict[str, Any]) -> Identity:
        if not self.token_scopes:
            return self.memo.get(cred, lambda: of_credential(cred))
        scopes = tuple(claim_scopes(claims))
        return self.memo.get(cred, lambda: of_credential(cred, scopes), scopes)

    async def _lookup(self, subject: str, claims: dict[str, Any]) -> Identity | None:
        assert self.store is not None
        cred = await self.store.lookup(self.lookup_type, subject)
        return self._identity(cred, claims) if cred is not None else None


def _extractor(kind: str, field: str) -> Any:
    if kind == "header":
        name = field.lower().encode()

        def from_header(ex: Exchange) -> str | None:
            value = ex.header(name)
            return value.decode("latin-1") if value else None
        return from_header
    if kind == "query":
        return lambda ex: query_param(ex.path, field)
    scheme = b"bearer" if kind == "authBearer" else field.lower().encode()

    def from_scheme(ex: Exchange) -> str | None:
        value = auth_scheme_value(ex, scheme)
        return value.decode("latin-1") if value else None
    return from_scheme


POLICIES.add(PolicySpec("jwt", JwtParams, JwtAuth,
                        "Authenticate by a signed JWT (HS*, RS*, PS*, ES*)"))
