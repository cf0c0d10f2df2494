"""The blocking client: HTTP/1.1 over the agent's unix socket, one
keep-alive connection per thread. The few headers Strata sets are read by
hand: ``http.client``'s general header parsing cost more than a 304 saves."""

import socket as _socket
import threading
from typing import Any, Dict, Optional, Tuple

from ._core import DEFAULT_SOCKET, Answer, Cache, RETRY, SessionBase, decode, error_of, path, settle
from ._errors import AgentUnavailable, SnapshotGone


#: The headers an answer is read for: each name, and how it starts a line.
_WANTED = tuple(
    (n, b"\r\n" + n.encode() + b":")
    for n in ("etag", "x-strata-snapshot", "x-strata-arm", "content-length", "connection")
)


class _Conn:
    """One keep-alive connection to the agent."""

    def __init__(self, socket_path: str, timeout: float):
        sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect(socket_path)
        except OSError:
            sock.close()
            raise
        self.sock = sock
        self.buf = bytearray()

    def close(self) -> None:
        self.sock.close()

    def _more(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionError("the agent closed the connection")
        self.buf += chunk

    def exchange(self, request: bytes) -> Tuple[Answer, bool]:
        """Sends one request, reads its answer; whether to keep the
        connection."""
        self.sock.sendall(request)
        end = self.buf.find(b"\r\n\r\n")
        while end < 0:
            self._more()
            end = self.buf.find(b"\r\n\r\n")
        # Lower-cased whole: the values read here (an ETag's hex, numbers,
        # an arm) are lower case or digits anyway.
        head = bytes(self.buf[:end]).lower() + b"\r\n"
        del self.buf[: end + 4]
        if not head.startswith(b"http/1.") or len(head) < 12:
            raise ConnectionError("not an HTTP answer: %r" % head[:64])
        status = int(head[9:12])
        headers: Dict[str, str] = {}
        for name, starts in _WANTED:
            at = head.find(starts)
            if at >= 0:
                start = at + len(starts)
                headers[name] = head[start : head.find(b"\r\n", start)].strip().decode("latin-1")
        if status in (204, 304) or 100 <= status < 200:
            length = 0
        elif "content-length" in headers:
            length = int(headers["content-length"])
        else:
            raise ConnectionError("an answer without Content-Length")
        while len(self.buf) < length:
            self._more()
        body = bytes(self.buf[:length])
        del self.buf[:length]
        keep = headers.get("connection", "").lower() != "close"
        return Answer(status, headers, body), keep


class Client:
    """Lookups from the Strata agent on this node.

    One ``Client`` may be shared by every thread of a process: each thread
    gets its own keep-alive connection, and the ETag cache is locked. A
    :class:`Session` belongs to one call (one thread or task at a time).

    ``timeout`` (seconds) bounds each request; ``cache_size`` answers are
    kept for revalidation (0 turns the cache off). Cached values are
    shared: treat returned dicts as read-only.
    """

    def __init__(self, socket: str = DEFAULT_SOCKET, timeout: float = 1.0, cache_size: int = 1024):
        self.socket = socket
        self.timeout = timeout
        self._cache = Cache(cache_size)
        self._local = threading.local()

    def tenant(self, tenant_id: str, snapshot: Optional[int] = None, session: Optional[str] = None) -> Dict[str, Any]:
        """The tenant's effective config (its canary's for ``session``'s
        share, when it has one)."""
        return self._lookup("tenant", tenant_id, snapshot, session)[0]

    def prompt(self, tenant_id: str, snapshot: Optional[int] = None, session: Optional[str] = None) -> str:
        """The tenant's system prompt: Layer 1's base prompt, then the
        tenant's. Call-time placeholders (``{caller_name}``) are yours to fill."""
        return self._lookup("prompt", tenant_id, snapshot, session)[0]

    def route(self, e164: str, snapshot: Optional[int] = None) -> str:
        """The tenant id owning a dialled number (``NotFound`` if none)."""
        return self._lookup("route", e164, snapshot)[0]

    def layer1(self, snapshot: Optional[int] = None) -> Dict[str, Any]:
        """Layer 1: base prompt, policy (plans among it) and defaults."""
        return self._lookup("layer1", "", snapshot)[0]

    def snapshot(self) -> Dict[str, Any]:
        """What the agent serves and its state (``/v1/snapshot``)."""
        answer = self._get(path("snapshot"), None)
        if answer.status != 200:
            raise error_of(answer)
        return decode("snapshot", answer.body)

    def session(self, call_id: str) -> "Session":
        """A call's lookups, locked to the snapshot of its first lookup and
        to its canary arm: ``with client.session(call_id) as s: ...``."""
        return Session(self, call_id)

    def close(self) -> None:
        """Closes this thread's connection (others close with their thread)."""
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _lookup(
        self, kind: str, key: str, snapshot: Optional[int] = None, session: Optional[str] = None
    ) -> Tuple[Any, Answer]:
        p = path(kind, key, snapshot, session)
        name = (kind, key)
        kept = self._cache.get(name)
        answer = self._get(p, kept[0] if kept else None)
        value = settle(self._cache, kind, name, kept, answer)
        if value is RETRY:
            answer = self._get(p, None)
            value = settle(self._cache, kind, name, None, answer)
        return value, answer

    def _get(self, p: str, tags: Optional[str]) -> Answer:
        request = "GET %s HTTP/1.1\r\nHost: strata\r\n" % p
        if tags:
            request += "If-None-Match: %s\r\n" % tags
        data = (request + "\r\n").encode("ascii")
        for attempt in (0, 1):
            conn = getattr(self._local, "conn", None)
            fresh = conn is None
            try:
                if conn is None:
                    conn = self._local.conn = _Conn(self.socket, self.timeout)
                answer, keep = conn.exchange(data)
            except (ConnectionError, ValueError) as e:
                # A kept-alive connection the agent closed (idle_timeout, a
                # restart): once more on a new one.
                self.close()
                if fresh or attempt:
                    raise AgentUnavailable("agent at %s: %s" % (self.socket, e)) from e
                continue
            except OSError as e:
                self.close()
                raise AgentUnavailable("agent at %s: %s" % (self.socket, e)) from e
            if not keep:
                self.close()
            return answer
        raise AgentUnavailable("agent at %s did not answer" % self.socket)


class Session(SessionBase):
    """One call's lookups: the first answers from the snapshot the agent
    serves and fixes it (``snapshot``); every later one asks for that
    snapshot, and tenant lookups pass the call id as ``session`` so the
    call keeps its canary arm. See :class:`strata_client._core.SessionState`
    for what happens when the snapshot leaves retention mid-call."""

    def __init__(self, client: Client, call_id: str):
        super().__init__(call_id)
        self._client = client

    def tenant(self, tenant_id: str) -> Dict[str, Any]:
        return self._lookup("tenant", tenant_id)

    def prompt(self, tenant_id: str) -> str:
        return self._lookup("prompt", tenant_id)

    def route(self, e164: str) -> str:
        return self._lookup("route", e164)

    def layer1(self) -> Dict[str, Any]:
        return self._lookup("layer1", "")

    def __enter__(self) -> "Session":
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def _lookup(self, kind: str, key: str) -> Any:
        try:
            value, answer = self._client._lookup(kind, key, *self._ask(kind))
        except SnapshotGone:
            if not self._relock():
                raise
            value, answer = self._client._lookup(kind, key, *self._ask(kind))
        self._state.took(answer)
        return value
