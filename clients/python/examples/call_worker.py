"""An example call worker: one incoming call, start to model request.

    python3 call_worker.py [--socket /run/strata/agent.sock] DIALLED_NUMBER CALL_ID [CALLER_NAME]

It routes the dialled number to its tenant, takes the tenant's config and
system prompt for the call's session (one snapshot and one canary arm for
the whole call), fills the placeholders only a call knows
(``{caller_name}``, ``{call_time}``: written ``{{caller_name}}`` in the
tenant's prompt template, so publishing leaves them for us), and prints
the request it would send to the model. Nothing is sent.
"""

import argparse
import datetime
import json
import re

from strata_client import Client, NotFound

#: What only the call knows; a placeholder not listed stays as written.
CALL_TIME = ("caller_name", "call_time")


def fill(prompt, values):
    """Replaces ``{name}`` for each call-time name with its value."""
    return re.sub(
        r"\{(%s)\}" % "|".join(CALL_TIME),
        lambda m: values.get(m.group(1), m.group(0)),
        prompt,
    )


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--socket", default="/run/strata/agent.sock")
    ap.add_argument("number")
    ap.add_argument("call_id")
    ap.add_argument("caller_name", nargs="?", default="there")
    args = ap.parse_args()

    client = Client(socket=args.socket)
    with client.session(args.call_id) as call:
        try:
            tenant = call.route(args.number)
        except NotFound:
            print(json.dumps({"reject": "no tenant owns %s" % args.number}))
            return
        config = call.tenant(tenant)
        prompt = fill(
            call.prompt(tenant),
            {
                "caller_name": args.caller_name,
                "call_time": datetime.datetime.now().strftime("%H:%M"),
            },
        )
        request = {
            "tenant": tenant,
            "snapshot": call.snapshot,
            "model": config["model"]["primary"],
            "fallbacks": config["model"]["fallbacks"],
            "key_ref": config["model"]["key_ref"],
            "temperature": config["generation"]["temperature"],
            "max_tokens": config["generation"]["max_tokens"],
            "max_concurrent_calls": config["limits"]["max_concurrent_calls"],
            "plan": config.get("plan"),
            "system": prompt,
        }
    print(json.dumps(request, indent=2))


if __name__ == "__main__":
    main()
