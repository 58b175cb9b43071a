"""Errors raised by the local services, each with a message a person can act on."""

from __future__ import annotations

from walduck.errors import WalduckError


class ServiceError(WalduckError, RuntimeError):
    """A local service could not be prepared, started, stopped or reached."""


class BinariesMissing(ServiceError):
    """The programs a service needs (PostgreSQL binaries, java, mvn) are not installed."""


class PortInUse(ServiceError):
    """The TCP port a service was told to listen on is already taken."""
