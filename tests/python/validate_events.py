#!/usr/bin/env python3
"""Reads every job event kept in the ARCA_EVENTS stream, as a dashboard
written in another language would, and validates each against the JSON
Schema of job events (schemas/json/job-event.json).

Usage: validate_events.py --nats-url URL --schema PATH
           [--user U --password P] [--tls-ca CA [--tls-cert C --tls-key K]]

Prints one JSON summary line on stdout:
  {"events": N, "jobs": {"<job>": "<final status>"}, "kinds": [...]}
and exits 1 (naming each problem on stderr) when an event does not
validate, its subject does not match its body, or a job's last event is
not `ended`. Needs nats-py and jsonschema (ops/test installs them).
"""

import argparse
import asyncio
import json
import ssl
import sys

import jsonschema
import nats
from nats.js.errors import NotFoundError

STREAM = "ARCA_EVENTS"


async def read_events(url, args):
    options = {}
    if args.user:
        options["user"] = args.user
        options["password"] = args.password
    if args.tls_ca:
        ctx = ssl.create_default_context(cafile=args.tls_ca)
        if args.tls_cert:
            ctx.load_cert_chain(args.tls_cert, args.tls_key)
        options["tls"] = ctx
    nc = await nats.connect(url, **options)
    try:
        js = nc.jetstream()
        info = await js.stream_info(STREAM)
        first, last = info.state.first_seq, info.state.last_seq
        events = []
        for seq in range(first, last + 1):
            try:
                msg = await js.get_msg(STREAM, seq)
            except NotFoundError:
                continue
            events.append((seq, msg.subject, msg.data))
        return events
    finally:
        await nc.close()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nats-url", required=True)
    parser.add_argument("--schema", required=True)
    parser.add_argument("--user")
    parser.add_argument("--password")
    parser.add_argument("--tls-ca")
    parser.add_argument("--tls-cert")
    parser.add_argument("--tls-key")
    args = parser.parse_args()

    with open(args.schema, encoding="utf-8") as f:
        schema = json.load(f)
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    validator = cls(schema, format_checker=cls.FORMAT_CHECKER)

    raw = asyncio.run(read_events(args.nats_url, args))
    problems = []
    jobs = {}
    last_kind = {}
    kinds = set()
    for seq, subject, data in raw:
        try:
            event = json.loads(data)
        except ValueError as e:
            problems.append(f"event {seq} on {subject} is not JSON: {e}")
            continue
        for error in validator.iter_errors(event):
            path = "/".join(str(p) for p in error.absolute_path) or "(root)"
            problems.append(f"event {seq} on {subject}: {path}: {error.message}")
        # arca.events.<job>.<kind>
        parts = subject.split(".")
        if len(parts) != 4 or parts[:2] != ["arca", "events"]:
            problems.append(f"event {seq}: unexpected subject {subject}")
            continue
        if event.get("job") != parts[2] or event.get("kind") != parts[3]:
            problems.append(
                f"event {seq}: subject {subject} does not match job {event.get('job')} kind {event.get('kind')}"
            )
        job = event.get("job")
        kinds.add(event.get("kind"))
        last_kind[job] = event.get("kind")
        jobs.setdefault(job, None)
        if event.get("kind") == "ended":
            jobs[job] = event.get("status")
    for job, kind in last_kind.items():
        if kind != "ended":
            problems.append(f"job {job}: last event is {kind}, not ended")
    for p in problems:
        print(p, file=sys.stderr)
    print(json.dumps({"events": len(raw), "jobs": jobs, "kinds": sorted(kinds)}))
    return 1 if problems or not raw else 0


if __name__ == "__main__":
    sys.exit(main())
