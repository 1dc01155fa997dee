"""The built-in service registry: self-registration with TTL heartbeats, watches.

``base`` (instance model, indexes, change waits), ``store`` (in memory, with a
snapshot on disk), ``etcd_store`` (shared by replicas through etcd), ``api``
(the HTTP API), ``server`` (standalone and embedded serving), ``client``
(``RegistryClient`` and the ``Registration`` heartbeat helper).
"""
