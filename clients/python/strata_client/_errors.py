"""Errors the agent answers with, typed: each carries the agent's error
code and message (docs/DESIGN.md, "Socket API")."""

from typing import Optional


class StrataError(Exception):
    """Any error from the agent or on the way to it."""

    def __init__(self, message: str, code: Optional[str] = None, status: Optional[int] = None):
        super().__init__(message)
        self.message = message
        #: The agent's error code (``unknown_tenant``, ``not_ready``, ...).
        self.code = code
        #: The HTTP status, when the agent answered.
        self.status = status


class NotFound(StrataError):
    """404: no such tenant, number or endpoint (there is no default tenant)."""


class BadRequest(StrataError):
    """400: the id, number or snapshot is not one (``bad_tenant_id``, ...)."""


class NotReady(StrataError):
    """503: the agent serves no verified snapshot yet."""


class SnapshotGone(StrataError):
    """410: the snapshot asked for is not retained (or no longer trusted)."""


class AgentUnavailable(StrataError):
    """The socket is missing, refused the connection, or did not answer in
    time: the agent is not running (or is overloaded)."""


def for_status(status: int, code: Optional[str], message: str) -> StrataError:
    """The typed error for an answer with ``status``."""
    kind = {400: BadRequest, 404: NotFound, 410: SnapshotGone, 503: NotReady}.get(status, StrataError)
    return kind(message, code=code, status=status)
