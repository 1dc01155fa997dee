"""The built-in service registry: self-registration with TTL heartbeats, watches.

``base`` (instance model, indexes, change waits), ``store`` (in memory, with a
snapshot on disk), ``etcd_store`` (shared by replicas through etcd), ``api``
(the HTTP API), ``auth`` and ``tokens`` (who may write: join and operator
tokens, hashed at rest, limits), ``server`` (standalone and embedded serving), ``client``
(``RegistryClient`` and the ``Registration`` heartbeat helper).
"""
