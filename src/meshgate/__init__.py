"""meshgate: API gateway, service-mesh sidecar and service registry."""

__version__ = "0.1.0"
