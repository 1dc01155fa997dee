"""Secrets at rest: slow hashes for passwords and keys, sealed JWT secrets, new ids.

Theory of operation
-------------------
* Passwords (basic-auth), key secrets (key-auth) and client secrets (oauth2)
  are stored only as ``scrypt$<log2 N>$<r>$<p>$<salt>$<hash>`` (base64, a
  16-byte random salt per secret). The parameters travel with the hash, so
  raising the cost (``MESHGATE_SCRYPT_COST``, log2 N, default 14) leaves old
  hashes valid. ``verify_hash`` is slow on purpose (about 0.1 s); callers
  run it in a thread (``guard.HashQueue``) and the verification cache keeps
  it off the hot path. An unknown key id or user is checked against
  ``dummy_hash`` (same parameters, matches nothing), so a wrong secret costs
  the same whether or not the id exists.
* JWT key secrets must stay readable to check HS256 signatures, so they are
  sealed, not hashed: AES-256-GCM under a key derived from system.config.yml
  ``crypto.cipherKey`` (``aesgcm$<nonce>$<ciphertext>``). Change
  ``cipherKey`` and existing JWT secrets no longer open (they fail closed).
* OAuth2 tokens are 128-bit random values; a fast SHA-256 digest is enough
  to store them (nobody can guess a preimage of a random 128-bit value).
* Ids as Express Gateway made them: uuid v4 for users and apps, base62 uuids
  (22 characters) for generated key ids and secrets.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
import uuid

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

SCRYPT_R, SCRYPT_P, SCRYPT_DKLEN = 8, 1, 32
DEFAULT_COST = 14
BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text.encode("ascii"), validate=True)


def scrypt_cost() -> int:
    raw = os.environ.get("MESHGATE_SCRYPT_COST", "")
    cost = int(raw) if raw.isdigit() else DEFAULT_COST
    return min(max(cost, 10), 20)


def _scrypt(secret: str, salt: bytes, cost: int, r: int, p: int, dklen: int) -> bytes:
    n = 1 << cost
    return hashlib.scrypt(secret.encode("utf-8"), salt=salt, n=n, r=r, p=p, dklen=dklen,
                          maxmem=256 * n * r + 4 * 1024 * 1024)


def hash_secret(secret: str) -> str:
    """A slow salted hash of ``secret`` with its parameters (blocking: run in a thread)."""
    cost = scrypt_cost()
    salt = os.urandom(16)
    digest = _scrypt(secret, salt, cost, SCRYPT_R, SCRYPT_P, SCRYPT_DKLEN)
    return f"scrypt${cost}${SCRYPT_R}${SCRYPT_P}${_b64(salt)}${_b64(digest)}"


def verify_hash(secret: str, stored: str) -> bool:
    """Whether ``secret`` matches a ``hash_secret`` result (blocking: run in a thread)."""
    try:
        scheme, cost, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt":
            return False
        expected = _unb64(digest)
        actual = _scrypt(secret, _unb64(salt), int(cost), int(r), int(p), len(expected))
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(actual, expected)


def dummy_hash(like: str = "") -> str:
    """A hash no secret matches, costing what ``like`` costs to check (the current cost
    when ``like`` is not a hash): unknown key ids and users are checked against it."""
    parts = like.split("$")
    if len(parts) != 6 or parts[0] != "scrypt":
        parts = ["scrypt", str(scrypt_cost()), str(SCRYPT_R), str(SCRYPT_P), "", ""]
        size = SCRYPT_DKLEN
    else:
        try:
            size = len(_unb64(parts[5]))
        except ValueError:
            size = SCRYPT_DKLEN
    return "$".join([*parts[:4], _b64(os.urandom(16)), _b64(os.urandom(size))])


def token_digest(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


class Sealer:
    """Reversible encryption of the secrets that must stay readable (JWT)."""

    def __init__(self, cipher_key: str) -> None:
        key = hashlib.sha256(b"meshgate-jwt-secret\x00" + cipher_key.encode("utf-8")).digest()
        self._aead = AESGCM(key)

    def seal(self, plain: str) -> str:
        nonce = os.urandom(12)
        return f"aesgcm${_b64(nonce)}${_b64(self._aead.encrypt(nonce, plain.encode(), None))}"

    def open(self, sealed: str) -> str | None:
        """The plaintext, or None when it was sealed under another cipherKey."""
        try:
            scheme, nonce, data = sealed.split("$")
            if scheme != "aesgcm":
                return None
            return self._aead.decrypt(_unb64(nonce), _unb64(data), None).decode("utf-8")
        except Exception:       # wrong key (InvalidTag), damaged value
            return None


def new_uuid() -> str:
    return str(uuid.uuid4())


def new_uuid62() -> str:
    """A random uuid in base62, as EG's ``uuid62.v4()`` (22 characters)."""
    value = uuid.uuid4().int
    out = []
    while value:
        value, digit = divmod(value, 62)
        out.append(BASE62[digit])
    return "".join(reversed(out)).rjust(22, "0")


def new_token_part() -> str:
    return secrets.token_hex(16)
