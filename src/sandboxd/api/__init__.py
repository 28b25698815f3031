"""The sandboxd services: method tables, message conversion, clients."""

from ._runtime_service import RUNTIME_SERVICE, runtime_service

__all__ = ["RUNTIME_SERVICE", "runtime_service"]
