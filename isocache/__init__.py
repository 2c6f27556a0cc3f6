"""isocache: a host-local range-caching HTTP proxy for VM images."""

__version__ = "0.1.0"
