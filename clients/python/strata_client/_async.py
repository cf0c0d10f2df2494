"""The asyncio client: HTTP/1.1 over the agent's unix socket with
``asyncio.open_unix_connection``, a pool of keep-alive connections."""

import asyncio
from typing import Any, Dict, List, Optional, Tuple

from ._core import DEFAULT_SOCKET, Answer, Cache, RETRY, SessionBase, decode, error_of, path, settle
from ._errors import AgentUnavailable, SnapshotGone

_Conn = Tuple[asyncio.StreamReader, asyncio.StreamWriter]


class AsyncClient:
    """The asyncio twin of :class:`strata_client.Client`, for call workers
    that cannot block. Share one among every task: requests take a pooled
    connection (at most ``max_connections`` at once; more wait). Not safe
    from several threads; used from another event loop, it starts a new
    pool there."""

    def __init__(
        self,
        socket: str = DEFAULT_SOCKET,
        timeout: float = 1.0,
        cache_size: int = 1024,
        max_connections: int = 32,
    ):
        self.socket = socket
        self.timeout = timeout
        self._cache = Cache(cache_size)
        self._idle: List[_Conn] = []
        self._max_connections = max_connections
        # Made inside the running loop, and again if another loop uses the
        # client (connections and the semaphore belong to one loop).
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._slots: Optional[asyncio.Semaphore] = None

    async def tenant(self, tenant_id: str, snapshot: Optional[int] = None, session: Optional[str] = None) -> Dict[str, Any]:
        """See :meth:`strata_client.Client.tenant`."""
        return (await self._lookup("tenant", tenant_id, snapshot, session))[0]

    async def prompt(self, tenant_id: str, snapshot: Optional[int] = None, session: Optional[str] = None) -> str:
        """See :meth:`strata_client.Client.prompt`."""
        return (await self._lookup("prompt", tenant_id, snapshot, session))[0]

    async def route(self, e164: str, snapshot: Optional[int] = None) -> str:
        """See :meth:`strata_client.Client.route`."""
        return (await self._lookup("route", e164, snapshot))[0]

    async def layer1(self, snapshot: Optional[int] = None) -> Dict[str, Any]:
        """See :meth:`strata_client.Client.layer1`."""
        return (await self._lookup("layer1", "", snapshot))[0]

    async def snapshot(self) -> Dict[str, Any]:
        """See :meth:`strata_client.Client.snapshot`."""
        answer = await self._get(path("snapshot"), None)
        if answer.status != 200:
            raise error_of(answer)
        return decode("snapshot", answer.body)

    def session(self, call_id: str) -> "AsyncSession":
        """``async with client.session(call_id) as s: ...``: see
        :meth:`strata_client.Client.session`."""
        return AsyncSession(self, call_id)

    async def close(self) -> None:
        """Closes the idle connections."""
        idle, self._idle = self._idle, []
        for _, writer in idle:
            writer.close()

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _lookup(
        self, kind: str, key: str, snapshot: Optional[int] = None, session: Optional[str] = None
    ) -> Tuple[Any, Answer]:
        p = path(kind, key, snapshot, session)
        name = (kind, key)
        kept = self._cache.get(name)
        answer = await self._get(p, kept[0] if kept else None)
        value = settle(self._cache, kind, name, kept, answer)
        if value is RETRY:
            answer = await self._get(p, None)
            value = settle(self._cache, kind, name, None, answer)
        return value, answer

    async def _get(self, p: str, tags: Optional[str]) -> Answer:
        request = "GET %s HTTP/1.1\r\nHost: strata\r\n" % p
        if tags:
            request += "If-None-Match: %s\r\n" % tags
        data = (request + "\r\n").encode("ascii")
        loop = asyncio.get_running_loop()
        if self._slots is None or self._loop is not loop:
            self._loop = loop
            self._slots = asyncio.Semaphore(self._max_connections)
            self._idle = []
        async with self._slots:
            for attempt in (0, 1):
                # The retry takes a new connection: the other idle ones may
                # have been closed by the agent at the same moment.
                fresh = attempt or not self._idle
                try:
                    conn = self._idle.pop() if not fresh else await asyncio.wait_for(
                        asyncio.open_unix_connection(self.socket), self.timeout
                    )
                except (OSError, asyncio.TimeoutError) as e:
                    raise AgentUnavailable("agent at %s: %s" % (self.socket, e)) from e
                try:
                    answer, keep = await asyncio.wait_for(_exchange(conn, data), self.timeout)
                except (OSError, asyncio.IncompleteReadError, ValueError) as e:
                    conn[1].close()
                    # A kept-alive connection the agent closed: once more.
                    if fresh or attempt:
                        raise AgentUnavailable("agent at %s: %s" % (self.socket, e)) from e
                    continue
                except asyncio.TimeoutError as e:
                    conn[1].close()
                    raise AgentUnavailable("agent at %s did not answer in %ss" % (self.socket, self.timeout)) from e
                if keep:
                    self._idle.append(conn)
                else:
                    conn[1].close()
                return answer
        raise AgentUnavailable("agent at %s did not answer" % self.socket)


async def _exchange(conn: _Conn, request: bytes) -> Tuple[Answer, bool]:
    """Sends one request and reads its answer; whether the connection may
    be used again."""
    reader, writer = conn
    writer.write(request)
    await writer.drain()
    status_line = await reader.readline()
    parts = status_line.split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1."):
        raise ValueError("not an HTTP answer: %r" % status_line[:64])
    status = int(parts[1])
    headers: Dict[str, str] = {}
    while True:
        line = await reader.readline()
        if line in (b"\r\n", b"\n"):
            break
        if not line:
            raise asyncio.IncompleteReadError(b"", None)
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    if status in (204, 304) or 100 <= status < 200:
        body = b""
    elif "content-length" in headers:
        body = await reader.readexactly(int(headers["content-length"]))
    elif headers.get("transfer-encoding", "").lower() == "chunked":
        body = b""
        while True:
            size = int((await reader.readline()).split(b";")[0].strip(), 16)
            chunk = await reader.readexactly(size + 2)
            if size == 0:
                break
            body += chunk[:-2]
    else:
        body = await reader.read()
        return Answer(status, headers, body), False
    keep = headers.get("connection", "").lower() != "close"
    return Answer(status, headers, body), keep


class AsyncSession(SessionBase):
    """One call's lookups, as :class:`strata_client.Session`."""

    def __init__(self, client: AsyncClient, call_id: str):
        super().__init__(call_id)
        self._client = client

    async def tenant(self, tenant_id: str) -> Dict[str, Any]:
        return await self._lookup("tenant", tenant_id)

    async def prompt(self, tenant_id: str) -> str:
        return await self._lookup("prompt", tenant_id)

    async def route(self, e164: str) -> str:
        return await self._lookup("route", e164)

    async def layer1(self) -> Dict[str, Any]:
        return await self._lookup("layer1", "")

    async def __aenter__(self) -> "AsyncSession":
        return self

    async def __aexit__(self, *exc: object) -> None:
        pass

    async def _lookup(self, kind: str, key: str) -> Any:
        try:
            value, answer = await self._client._lookup(kind, key, *self._ask(kind))
        except SnapshotGone:
            if not self._relock():
                raise
            value, answer = await self._client._lookup(kind, key, *self._ask(kind))
        self._state.took(answer)
        return value
