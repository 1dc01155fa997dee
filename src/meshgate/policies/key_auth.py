"""key-auth: authenticate by an API key ``keyId:keySecret`` (EG's key-auth policy).

Theory of operation
-------------------
EG's parameters and defaults: the key is read from the ``apiKeyHeader``
(``Authorization``) as ``<apiKeyHeaderScheme> <key>`` (scheme ``apiKey``,
compared case-insensitively; ``disableHeadersScheme`` takes the last word of
the header whatever precedes it), else from the ``apiKeyField`` query
parameter (``apiKey``); ``disableHeaders`` / ``disableQueryParam`` turn a
source off. The key must be an active key-auth credential of an active
consumer (``keyId``) with that ``keySecret``, holding every scope of the
apiEndpoint (else 403). ``passThrough`` lets a request without a valid key
go on anonymous. See ``_auth`` for the common outcome.

Hot path: the per-request part is ``_credential_auth.KeyAuth`` (compiled):
a key seen before is answered from the store's verification cache without a
coroutine; only a miss awaits the store.
"""

from __future__ import annotations

from pydantic import Field

from meshgate.config.base import ParamsModel
from meshgate.policies import POLICIES, Action, BuildContext, PolicySpec
from meshgate.policies._auth import REALM, Gate, shared_store
from meshgate.policies._credential_auth import KeyAuth

TYPE = "key-auth"


class KeyAuthParams(ParamsModel):
    passThrough: bool = Field(False, description="Go on anonymous instead of answering 401")
    apiKeyHeader: str = Field("Authorization", description="Header carrying the key")
    apiKeyHeaderScheme: str = Field("apiKey", description="Scheme before the key in the header")
    apiKeyField: str = Field("apiKey", description="Query parameter carrying the key")
    disableHeaders: bool = Field(False, description="Do not read the key from the header")
    disableHeadersScheme: bool = Field(False, description="Do not check the header's scheme")
    disableQueryParam: bool = Field(False, description="Do not read the key from the query")


def build(params: KeyAuthParams, ctx: BuildContext) -> Action:
    gate = Gate(TYPE, params.passThrough, f'{params.apiKeyHeaderScheme} realm="{REALM}"')
    return KeyAuth(
        shared_store(ctx), gate,
        header=None if params.disableHeaders else params.apiKeyHeader.lower().encode(),
        scheme=(None if params.disableHeadersScheme
                else params.apiKeyHeaderScheme.lower().encode()),
        field=None if params.disableQueryParam else params.apiKeyField)


POLICIES.add(PolicySpec(TYPE, KeyAuthParams, build,
                        "Authenticate by an API key (keyId:keySecret) in a header or the query"))
