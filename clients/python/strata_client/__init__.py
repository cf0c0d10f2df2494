"""Client for the Strata agent's unix socket: tenant configs, prompts and
routes for the call worker, blocking (:class:`Client`) and asyncio
(:class:`AsyncClient`), standard library only.

The session rule: a call takes every lookup through one
``client.session(call_id)``; the first answer fixes the snapshot, and every
later lookup of the call asks for that snapshot and passes the call id, so
the whole call sees one snapshot and one canary arm::

    from strata_client import Client
    client = Client()                       # /run/strata/agent.sock
    with client.session(call_id) as s:
        tenant = s.route("+14155550100")
        config, prompt = s.tenant(tenant), s.prompt(tenant)
"""

from ._async import AsyncClient, AsyncSession
from ._core import DEFAULT_SOCKET
from ._errors import AgentUnavailable, BadRequest, NotFound, NotReady, SnapshotGone, StrataError
from ._sync import Client, Session

__all__ = [
    "DEFAULT_SOCKET",
    "AgentUnavailable",
    "AsyncClient",
    "AsyncSession",
    "BadRequest",
    "Client",
    "NotFound",
    "NotReady",
    "Session",
    "SnapshotGone",
    "StrataError",
]
