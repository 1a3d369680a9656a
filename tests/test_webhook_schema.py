"""The webhook contract in the repo: real deliveries (``replytrack notify --once`` posting
real events to a local HTTP receiver) match ``postfix-example/webhook/webhook.schema.json``,
and the two verification examples (Python, Node.js) accept their signatures and refuse a
tampered body.

The schema is checked with a small validator of the JSON Schema keywords the file uses
(type, enum, required, properties, additionalProperties, items, pattern, minimum), not
the ``jsonschema`` package: it is not a dependency of the test extra (pyproject.toml is
not this change's to edit), and an unsupported keyword in the schema fails the test
rather than being skipped.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from replytrack.cli import cli
from replytrack.store import Event
from replytrack.store.sqlite import SQLiteStore

EXAMPLES = Path(__file__).parent.parent / "postfix-example" / "webhook"
SECRET = "webhook-schema-test-secret"
_KNOWN = {
    "$schema", "$id", "title", "description", "type", "enum", "required", "properties",
    "additionalProperties", "items", "pattern", "minimum",
}  # fmt: skip
_TYPES: dict[str, type | tuple[type, ...]] = {
    "object": dict, "array": list, "string": str, "boolean": bool, "null": type(None),
    "integer": int, "number": (int, float),
}  # fmt: skip


def problems(value: Any, schema: dict[str, Any], where: str = "$") -> list[str]:
    """Where ``value`` breaks ``schema`` (empty when it conforms)."""
    unknown = set(schema) - _KNOWN
    assert not unknown, f"validator does not know {unknown} (at {where})"
    found: list[str] = []
    if "type" in schema:
        types = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
        ok = any(
            isinstance(value, _TYPES[t]) and not (t in ("integer", "number") and value is True)
            for t in types
        )
        if not ok:
            return [f"{where}: {value!r} is not {schema['type']}"]
    if "enum" in schema and value not in schema["enum"]:
        found.append(f"{where}: {value!r} not in {schema['enum']}")
    if "pattern" in schema and isinstance(value, str) and not re.search(schema["pattern"], value):
        found.append(f"{where}: {value!r} does not match {schema['pattern']}")
    if "minimum" in schema and isinstance(value, int) and value < schema["minimum"]:
        found.append(f"{where}: {value} < {schema['minimum']}")
    if isinstance(value, dict):
        found += [f"{where}: {k} missing" for k in schema.get("required", []) if k not in value]
        props = schema.get("properties", {})
        for key, item in value.items():
            if key in props:
                found += problems(item, props[key], f"{where}.{key}")
            elif schema.get("additionalProperties", True) is False:
                found.append(f"{where}: unexpected key {key}")
    if isinstance(value, list) and "items" in schema:
        for n, item in enumerate(value):
            found += problems(item, schema["items"], f"{where}[{n}]")
    return found


@pytest.fixture
def receiver() -> Iterator[list[tuple[dict[str, str], bytes]]]:
    """A webhook endpoint on loopback: every request's headers and raw body."""
    got: list[tuple[dict[str, str], bytes]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            got.append(({k.lower(): v for k, v in self.headers.items()}, body))
            self.send_response(204)
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    got.append(({"url": f"http://127.0.0.1:{server.server_port}/hook"}, b""))
    yield got
    server.shutdown()
    server.server_close()


def _deliver(tmp_path: Path, url: str) -> None:
    """Real events (two by the CLI, a reply as the milter records it), posted for real."""
    config = tmp_path / "replytrack.toml"
    config.write_text(
        f'db = "{tmp_path / "rt.db"}"\ndomain = "replies.acme-sales.net"\n'
        f'[notify]\nwebhooks = ["{url}"]\nsecret = "{SECRET}"\n'
    )
    env = {k: None for k in os.environ if k.startswith("REPLYTRACK_")}

    def run(*args: str) -> None:
        result = CliRunner().invoke(cli, ["-c", str(config), *args], env=env)
        assert result.exit_code == 0, result.output

    run("init")
    run("stop", "--campaign", "spring", "--reason", "pricing changed")
    run("stop", "--campaign", "spring", "--recipient", "bob@acme-prospect.net")
    # A reply as the milter records it (its detail keys included).
    store = SQLiteStore(tmp_path / "rt.db")
    store.record_event(
        Event(
            kind="reply",
            created_at=time.time(),
            campaign="autumn",
            message_id="abc@replies.acme-sales.net",
            inbound_message_id="r1@acme-prospect.net",
            sender="ann@acme-prospect.net",
            recipient="ann@acme-prospect.net",
            relation="original_recipient",
            evidence=("in-reply-to",),
            detail={"match": "in-reply-to", "matched": ["abc@replies.acme-sales.net"],
                    "subject": "Re: hi", "intent": "positive", "scope": "recipient",
                    "stopped": [["autumn", "ann@acme-prospect.net"]]},
            queue_id="4XyZ1",
            actor="milter",
        )
    )  # fmt: skip
    store.close_all()
    run("notify", "--once")


def test_real_deliveries_match_the_schema_and_verify_in_two_languages(
    tmp_path: Path, receiver: list[tuple[dict[str, str], bytes]]
) -> None:
    url = receiver.pop(0)[0]["url"]
    _deliver(tmp_path, url)
    assert len(receiver) == 3, receiver
    schema = json.loads((EXAMPLES / "webhook.schema.json").read_text())
    kinds = set()
    for headers, body in receiver:
        event = json.loads(body)
        assert problems(event, schema) == [], event
        kinds.add(event["kind"])
        assert headers["x-replytrack-event-id"] == str(event["id"])
    assert kinds == {"stopped", "reply"}
    # The schema is not vacuous: a changed payload breaks it.
    event = json.loads(receiver[0][1])
    assert problems({**event, "extra": 1}, schema) and problems({**event, "kind": "x"}, schema)

    verifiers = [[sys.executable, str(EXAMPLES / "verify.py")]]
    if shutil.which("node"):
        verifiers.append([shutil.which("node") or "node", str(EXAMPLES / "verify.js")])
    env = {**os.environ, "WEBHOOK_SECRET": SECRET}
    for verifier in verifiers:
        for headers, body in receiver:
            args = [headers["x-replytrack-timestamp"], headers["x-replytrack-signature"]]
            good = subprocess.run([*verifier, *args], input=body, env=env, capture_output=True)
            assert good.returncode == 0 and good.stdout.strip() == b"valid", good
            bad = subprocess.run(
                [*verifier, *args], input=body.replace(b"spring", b"sprinG"), env=env,
                capture_output=True,
            )  # fmt: skip
            if b"spring" in body:
                assert bad.returncode == 1 and bad.stdout.strip() == b"INVALID", bad
        # A stale timestamp is refused even with a correct signature for it.
        headers, body = receiver[0]
        from replytrack.notify import sign

        old = str(int(headers["x-replytrack-timestamp"]) - 3600)
        stale = subprocess.run(
            [*verifier, old, sign(SECRET, old, body)], input=body, env=env, capture_output=True
        )
        assert stale.returncode == 1, stale
