"""basic-auth: authenticate by HTTP Basic username and password (EG's basic-auth policy).

Theory of operation
-------------------
``Authorization: Basic base64(username:password)``: the username names an
active user (or app id -- EG's ``validateConsumer`` order) whose basic-auth
credential is active and whose password matches; the credential must hold
every scope of the apiEndpoint (else 403 -- EG answered 401 here, unlike its
other policies). Failure answers 401 with ``WWW-Authenticate: Basic
realm="Users"`` (passport-http's realm), or goes on anonymous with
``passThrough``, EG's only parameter.

EG's strategy checked the *oauth2* credential instead when the apiEndpoint
had no scopes (its token endpoint reused the strategy); meshgate always
checks the basic-auth credential.

Hot path: the per-request part is ``_credential_auth.BasicAuth`` (compiled):
a password proven once is answered from the store's verification cache
without a coroutine (and without the slow hash).
"""

from __future__ import annotations

from pydantic import Field

from meshgate.config.base import ParamsModel
from meshgate.policies import POLICIES, Action, BuildContext, PolicySpec
from meshgate.policies._auth import REALM, Gate, shared_store
from meshgate.policies._credential_auth import BasicAuth

TYPE = "basic-auth"


class BasicAuthParams(ParamsModel):
    passThrough: bool = Field(False, description="Go on anonymous instead of answering 401")


def build(params: BasicAuthParams, ctx: BuildContext) -> Action:
    return BasicAuth(shared_store(ctx), Gate(TYPE, params.passThrough, f'Basic realm="{REALM}"'))


POLICIES.add(PolicySpec(TYPE, BasicAuthParams, build,
                        "Authenticate by HTTP Basic username and password"))
