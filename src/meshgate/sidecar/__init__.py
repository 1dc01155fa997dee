"""Sidecar mode: a meshgate next to one service instance (see ``meshgate sidecar``)."""
