"""The Python client against a real agent (run by tests/tests/python_client.rs).

    test_client.py SOCKET TENANT NUMBER NOT_READY_SOCKET

TENANT has a 50 % canary at version 9.0.0; NOT_READY_SOCKET is an agent
serving nothing yet. Halfway it prints READY and waits for a line on stdin
(the harness publishes a new snapshot meanwhile), then checks that a session
begun before it still answers from its snapshot. Prints OK at the end.
"""

import asyncio
import sys

from strata_client import (
    AgentUnavailable,
    AsyncClient,
    BadRequest,
    Client,
    NotFound,
    NotReady,
    SnapshotGone,
)


def raises(kind, code, fn, *args, **kwargs):
    try:
        fn(*args, **kwargs)
    except kind as e:
        assert code is None or e.code == code, (e.code, e.message)
        assert e.message, "errors carry the agent's message"
        return e
    raise AssertionError("%s did not raise %s" % (fn, kind.__name__))


def main():
    sock, tenant, number, not_ready = sys.argv[1:5]
    c = Client(socket=sock)

    # Every method.
    first = c.snapshot()["version"]
    assert c.route(number) == tenant
    config = c.tenant(tenant)
    assert config["tenant_id"] == tenant and config["version"] != "9.0.0"
    prompt = c.prompt(tenant)
    assert prompt.startswith(c.layer1()["base_prompt"])
    assert c.tenant(tenant, snapshot=first)["config_hash"] == config["config_hash"]

    # The 304 path: the same answer, revalidated, not parsed again.
    assert c.tenant(tenant) is config

    # Every error.
    raises(NotFound, "unknown_tenant", c.tenant, "no-such-tenant")
    raises(NotFound, "unknown_number", c.route, "+19999999999")
    raises(BadRequest, "bad_tenant_id", c.prompt, "Not A Tenant")
    raises(SnapshotGone, "snapshot_gone", c.tenant, tenant, snapshot=first + 1000)
    raises(NotReady, "not_ready", Client(socket=not_ready).tenant, tenant)
    raises(AgentUnavailable, None, Client(socket=sock + ".missing").tenant, tenant)

    # A session keeps its arm and its snapshot.
    arms = {}
    for i in range(200):
        with c.session("call-%d" % i) as s:
            version = s.tenant(tenant)["version"]
            assert s.tenant(tenant)["version"] == version
            assert s.snapshot == first
            arms[i] = version
    canary = sum(v == "9.0.0" for v in arms.values())
    assert 60 <= canary <= 140, "%d of 200 sessions on the 50 %% canary" % canary
    # Answers are kept by content: a session on the stable arm is
    # revalidated against the plain lookup's answer (a 304, no parse).
    stable = next(i for i, v in arms.items() if v != "9.0.0")
    assert c.session("call-%d" % stable).tenant(tenant) is config

    # A session that spans a publish.
    spanning = c.session("call-span")
    before = spanning.tenant(tenant)
    print("READY", flush=True)
    sys.stdin.readline()
    assert c.snapshot()["version"] == first + 1, "the harness published"
    assert spanning.tenant(tenant) == before
    assert spanning.snapshot == first
    assert c.session("call-new").route(number) == tenant
    with c.session("call-after") as s:
        s.tenant(tenant)
        assert s.snapshot == first + 1

    # The asyncio twin, 100 sessions at once.
    async def calls():
        a = AsyncClient(socket=sock, max_connections=16)
        try:

            async def call(i):
                async with a.session("call-%d" % i) as s:
                    owner = await s.route(number)
                    version = (await s.tenant(owner))["version"]
                    await s.prompt(owner)
                    assert (await s.tenant(owner))["version"] == version
                    return s.snapshot, version

            results = await asyncio.gather(*(call(i) for i in range(100)))
            assert {snap for snap, _ in results} == {first + 1}
            for i, (_, version) in enumerate(results):
                assert version == arms[i], "call-%d changed arm" % i
            try:
                await a.tenant("no-such-tenant")
                raise AssertionError("no NotFound")
            except NotFound as e:
                assert e.code == "unknown_tenant"
        finally:
            await a.close()

    asyncio.run(calls())
    print("OK", flush=True)


if __name__ == "__main__":
    main()
