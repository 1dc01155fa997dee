"""The consumer store: EG's users, apps, credentials, scopes and tokens over a backend.

Theory of operation
-------------------
``ConsumerStore`` is the one implementation of the ``Store`` protocol
(``store.api``); it is assembled from one mixin per concern over the shared
``StoreCore``:

* ``users.UsersMixin`` -- users and apps (Admin API ``/users``, ``/apps``);
* ``credentials.CredentialsMixin`` -- credentials and the scope list
  (``/credentials``, ``/scopes``);
* ``tokens.TokensMixin`` -- OAuth2 tokens and codes (``/tokens``);
* ``verify.VerifyMixin`` -- the cached look-ups auth policies call.

What differs between SQLite and Redis is only the ``Backend`` under it, so
EG's rules exist once. ``store.open_store`` picks the backend from the config.
"""

from __future__ import annotations

from meshgate.store.credentials import CredentialsMixin
from meshgate.store.tokens import TokensMixin
from meshgate.store.users import UsersMixin
from meshgate.store.verify import VerifyMixin


class ConsumerStore(VerifyMixin, TokensMixin, CredentialsMixin, UsersMixin):
    """Users, apps, credentials, scopes and tokens, with a verification cache."""
