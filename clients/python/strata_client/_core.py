"""What the sync and asyncio clients share: paths, answers, the ETag cache
and the session rule. No I/O here."""

import functools
import json
import threading
from collections import OrderedDict
from typing import Any, Dict, Optional, Tuple
from urllib.parse import quote

from ._errors import StrataError, for_status

#: Where the packaged agent listens.
DEFAULT_SOCKET = "/run/strata/agent.sock"


class Answer:
    """One answer: status, the headers Strata sets, and the body."""

    __slots__ = ("status", "etag", "snapshot", "arm", "body")

    def __init__(self, status: int, headers: Dict[str, str], body: bytes):
        self.status = status
        etag = headers.get("etag")
        self.etag = etag.strip('"') if etag else None
        snapshot = headers.get("x-strata-snapshot")
        self.snapshot = int(snapshot) if snapshot and snapshot.isdigit() else None
        self.arm = headers.get("x-strata-arm")
        self.body = body


@functools.lru_cache(maxsize=4096)
def path(kind: str, key: str = "", snapshot: Optional[int] = None, session: Optional[str] = None) -> str:
    """The request path of a lookup (the last few thousand remembered:
    a call worker asks for the same tenants again and again)."""
    if kind == "tenant":
        p = "/v1/tenants/" + quote(key, safe="")
    elif kind == "prompt":
        p = "/v1/tenants/" + quote(key, safe="") + "/prompt"
    elif kind == "route":
        p = "/v1/routes/" + quote(key, safe="")
    elif kind == "layer1":
        p = "/v1/layer1"
    else:
        p = "/v1/snapshot"
    query = []
    if snapshot is not None:
        query.append("snapshot=%d" % snapshot)
    if session:
        query.append("session=" + quote(session, safe=""))
    return p + ("?" + "&".join(query) if query else "")


def error_of(answer: Answer) -> Exception:
    """The typed error an error answer stands for."""
    code, message = None, answer.body.decode("utf-8", "replace")
    try:
        err = json.loads(answer.body)["error"]
        code, message = err.get("code"), err.get("message", message)
    except (ValueError, KeyError, TypeError):
        pass
    return for_status(answer.status, code, message)


def decode(kind: str, body: bytes) -> Any:
    """A lookup's value: the prompt as text, everything else parsed JSON
    (a route as its tenant id)."""
    if kind == "prompt":
        return body.decode("utf-8")
    value = json.loads(body)
    if kind == "route":
        return value["tenant_id"]
    return value


#: What :func:`settle` answers for a 304 it cannot resolve from the
#: answers kept before the request (one without an ``ETag`` while two arms
#: are kept): ask again without ``If-None-Match``.
RETRY = object()

#: How many answers (canary arms) are kept for one name.
ARMS = 2


def settle(cache: "Cache", kind: str, name: Tuple[str, str], kept: Optional["Kept"], answer: Answer) -> Any:
    """A lookup's value from its answer: the kept one a 304 names, else the
    body decoded (and kept under ``name`` with its ETag); an error raised."""
    if answer.status == 304:
        if kept is None:
            raise StrataError("the agent answered 304 to a request that was not conditional", status=304)
        arms = kept[1]
        for etag, value in arms:
            if etag == answer.etag or (answer.etag is None and len(arms) == 1):
                return value
        return RETRY
    if answer.status != 200:
        raise error_of(answer)
    value = decode(kind, answer.body)
    if answer.etag:
        cache.put(name, answer.etag, value)
    return value


#: What the cache keeps for a name: the ``If-None-Match`` value naming
#: every kept answer, and the answers ``(etag, value)``, newest first.
Kept = Tuple[str, Tuple[Tuple[str, Any], ...]]


class Cache:
    """The last answers with an ETag, revalidated with ``If-None-Match``, so
    an unchanged config costs a 304 and no parse.

    Every ETag the agent sets is a hash of the content, so answers are kept
    by what they name (``("tenant", id)``), not by path: one entry serves
    every snapshot and every call's session that answers the same bytes. A
    tenant with a canary has two answers; the last :data:`ARMS` are kept
    and all named in the request, and the 304's ETag says which is current.
    Values are shared between callers: treat them as read-only. Safe from
    several threads."""

    def __init__(self, size: int):
        self._size = size
        self._items: "OrderedDict[Tuple[str, str], Kept]" = OrderedDict()
        self._lock = threading.Lock()

    def get(self, name: Tuple[str, str]) -> Optional[Kept]:
        if self._size <= 0:
            return None
        with self._lock:
            item = self._items.get(name)
            if item is not None:
                self._items.move_to_end(name)
            return item

    def put(self, name: Tuple[str, str], etag: str, value: Any) -> None:
        if self._size <= 0:
            return
        with self._lock:
            old = self._items.get(name)
            arms = ((etag, value),) + tuple(a for a in (old[1] if old else ()) if a[0] != etag)
            arms = arms[:ARMS]
            self._items[name] = (", ".join('"%s"' % e for e, _ in arms), arms)
            self._items.move_to_end(name)
            while len(self._items) > self._size:
                self._items.popitem(last=False)


class SessionState:
    """A call's lock: the snapshot of its first lookup and its canary draw
    (``session=``). When that snapshot leaves the node's retention mid-call
    (410 ``snapshot_gone``, rare with the agent's ``retain_for``), the
    session moves to the snapshot the agent serves now and counts it in
    ``relocked``: a call goes on with a consistent, newer snapshot rather
    than failing."""

    __slots__ = ("call_id", "snapshot", "relocked")

    def __init__(self, call_id: str):
        self.call_id = call_id
        self.snapshot: Optional[int] = None
        self.relocked = 0

    def took(self, answer: Answer) -> None:
        if self.snapshot is None and answer.snapshot is not None:
            self.snapshot = answer.snapshot


class SessionBase:
    """What a call's session holds, sync or asyncio: its lock (see
    :class:`SessionState`)."""

    def __init__(self, call_id: str):
        self._state = SessionState(call_id)

    @property
    def snapshot(self) -> Optional[int]:
        """The snapshot this call is locked to (after its first lookup)."""
        return self._state.snapshot

    @property
    def relocked(self) -> int:
        """How many times the call moved to a newer snapshot because its
        own left the node's retention."""
        return self._state.relocked

    def _ask(self, kind: str) -> Tuple[Optional[int], Optional[str]]:
        """The snapshot and session a lookup of ``kind`` passes."""
        s = self._state
        return s.snapshot, (s.call_id if kind in ("tenant", "prompt") else None)

    def _relock(self) -> bool:
        """After a 410: move to the current snapshot, if the call had one."""
        s = self._state
        if s.snapshot is None:
            return False
        s.snapshot = None
        s.relocked += 1
        return True
