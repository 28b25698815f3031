"""The protocol documents under docs/ cover what the server really serves.

Every method the server serves has a section in docs/services.md, and that section's
"Request field" table lists exactly the fields the server accepts in its request message.
The methods come from the method tables ``serve_controller`` hands its server; the fields
from the server itself, probed over a real socket with an unknown field at every level while
the message checks of the api edge are recorded (each names the fields it allows and where).
The sim sandboxer's settings are in docs/sandboxers.md, and the byte-level examples of
docs/wire.md are whole frames, byte for byte what sandboxd's encoder writes.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio

from sandboxd import Controller, RPCError, serve_controller
from sandboxd.api import _convert
from sandboxd.rpc import Client, Method, Server, open_client
from sandboxd.wire import (
    Frame,
    FrameDecoder,
    FrameType,
    decode_request,
    dumps,
    encode_error,
    encode_request,
    encode_response,
    loads_strict,
)

DOCS = Path(__file__).resolve().parent.parent / "docs"

#: A field no request has: every message check refuses it, naming the fields it allows.
PROBE = "zz_not_a_field"

#: A path to a request field: ``("rootfs[]", "options")`` is ``rootfs[].options``, the
#: ``options`` of each map in the ``rootfs`` array.
FieldPath = tuple[str, ...]


# -- what the documents say ----------------------------------------------------------------------


@attrs.frozen
class Section:
    """A method's section of docs/services.md: its request fields, and its whole text."""

    fields: frozenset[str]
    text: str


def documented_methods(text: str) -> dict[tuple[str, str], Section]:
    """``(service, method) -> Section`` for every "### `Method`" under a "## `service`"."""
    sections: dict[tuple[str, str], list[str]] = {}
    lines: list[str] | None = None
    service = None
    for line in text.splitlines():
        if line.startswith("## "):
            heading = re.fullmatch(r"## `(sandboxd\.v\d+\.\w+)`", line)
            service = heading.group(1) if heading else None
            lines = None
        elif line.startswith("### "):
            heading = re.fullmatch(r"### `(\w+)`", line)
            lines = None
            if service is not None and heading is not None:
                lines = sections.setdefault((service, heading.group(1)), [])
        elif lines is not None:
            lines.append(line)
    return {key: Section(request_fields(body), "\n".join(body)) for key, body in sections.items()}


def request_fields(lines: list[str]) -> frozenset[str]:
    """The first cells of the rows of the section's "Request field" tables."""
    fields = set()
    in_table = False
    for line in lines:
        if line.startswith("| Request field "):
            in_table = True
        elif in_table and line.startswith("|"):
            cell = re.match(r"\|\s*`([^`]+)`", line)
            if cell is not None:
                fields.add(cell.group(1))
        else:
            in_table = False
    return frozenset(fields)


def table_keys(text: str, heading: str) -> set[str]:
    """The backquoted first cells of every table row in the section under ``heading``."""
    section = text.split(f"\n{heading}\n", 1)[1].split("\n## ", 1)[0]
    return set(re.findall(r"^\|\s*`([^`]+)`", section, flags=re.M))


# -- what the server accepts ---------------------------------------------------------------------


@attrs.frozen
class Served:
    path: str
    services: Mapping[str, Mapping[str, Method]]


@pytest.fixture
async def served(nursery: trio.Nursery, sock_path: str, monkeypatch: pytest.MonkeyPatch) -> Served:
    """``serve_controller`` on a real socket, and the method tables it gave its server."""
    tables: list[Mapping[str, Mapping[str, Method]]] = []
    serve_unix = Server.serve_unix

    async def recording_serve_unix(self: Server, path: str, **kwargs: Any) -> None:
        tables.append(self.services)
        await serve_unix(self, path, **kwargs)

    monkeypatch.setattr(Server, "serve_unix", recording_serve_unix)
    controller = await nursery.start(Controller(default_sandboxer="sim").run)
    await nursery.start(serve_controller, controller, sock_path)
    (services,) = tables
    return Served(sock_path, services)


@pytest.fixture
def field_checks(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, frozenset[str]]]:
    """Every message check the api edge makes from now on: where (``Create.options``) and
    the fields it allows there."""
    original = _convert.check_fields
    checks: list[tuple[str, frozenset[str]]] = []

    def recording_check_fields(
        msg: Mapping[str, Any], allowed: frozenset[str], where: str
    ) -> None:
        checks.append((where, frozenset(allowed)))
        original(msg, allowed, where)

    patched = 0
    for name, module in list(sys.modules.items()):
        if name.startswith("sandboxd.") and getattr(module, "check_fields", None) is original:
            monkeypatch.setattr(module, "check_fields", recording_check_fields)
            patched += 1
    assert patched, "the api edge no longer checks request fields with check_fields"
    return checks


def path_of(where: str, method: str) -> FieldPath:
    """``Create.rootfs[0]`` -> ``("rootfs[]",)``: where a check was made, as a field path."""
    assert where == method or where.startswith(f"{method}."), (where, method)
    return tuple(re.sub(r"\[\d+\]$", "[]", part) for part in where.split(".")[1:])


def nested(path: FieldPath, leaf: object) -> dict[str, Any]:
    """A message holding ``leaf`` at ``path``."""
    value = leaf
    for name in reversed(path):
        value = {name[:-2]: [value]} if name.endswith("[]") else {name: value}
    assert isinstance(value, dict)
    return value


async def refusal(
    client: Client, service: str, method: str, message: dict[str, Any]
) -> str | None:
    """The message of the error the call gets; None if it succeeds."""
    try:
        await client.call(service, method, message)
    except RPCError as err:
        return err.message
    return None


async def accepted_fields(
    client: Client, service: str, method: str, checks: list[tuple[str, frozenset[str]]]
) -> frozenset[str] | None:
    """The request fields ``method`` accepts, by path; None if it ignores its fields.

    An unknown field at the top finds the fields of the request; then each of them is given
    a map, and an array of one map, holding an unknown field: where that reaches a message
    check of its own (``options``, each of ``rootfs``), its fields are found the same way.
    """
    checks.clear()
    top = await refusal(client, service, method, {PROBE: 1})
    if top is None:
        assert not checks, f"{method} checks its fields but accepted an unknown one"
        return None
    assert "unknown field" in top, f"{service}/{method} refused an unknown field so: {top}"
    allowed: dict[FieldPath, frozenset[str]] = {}

    def take_checks() -> list[FieldPath]:
        found = []
        for where, fields in checks:
            path = path_of(where, method)
            if path not in allowed:
                allowed[path] = fields
                found.append(path)
        checks.clear()
        return found

    todo = take_checks()
    assert todo == [()], f"{method}: the unknown field was checked at {todo}"
    base = {"sandbox_id": "probe"} if "sandbox_id" in allowed[()] else {}
    while todo:
        path = todo.pop()
        for name in sorted(allowed[path]):
            for child in ((*path, name), (*path, f"{name}[]")):
                await refusal(client, service, method, {**base, **nested(child, {PROBE: 1})})
                todo += take_checks()
    return frozenset(".".join((*path, name)) for path, names in allowed.items() for name in names)


async def test_every_method_and_request_field_the_server_accepts_is_documented(
    served: Served, field_checks: list[tuple[str, frozenset[str]]]
) -> None:
    docs = documented_methods((DOCS / "services.md").read_text())
    serves = {(service, name) for service, methods in served.services.items() for name in methods}
    assert sorted(serves - docs.keys()) == [], "methods served but not documented"
    assert sorted(docs.keys() - serves) == [], "methods documented but not served"
    problems = []
    async with open_client(served.path) as client:
        for service, method in sorted(serves):
            section = docs[service, method]
            fields = await accepted_fields(client, service, method, field_checks)
            if fields is None:
                if section.fields or "ignored" not in section.text:
                    problems.append(f"{method}: say that its request fields are ignored")
                continue
            for name in sorted(fields - section.fields):
                problems.append(f"{method}: request field {name!r} is accepted, not documented")
            for name in sorted(section.fields - fields):
                problems.append(f"{method}: request field {name!r} is documented, not accepted")
    assert problems == []


async def test_every_sim_setting_is_documented(served: Served) -> None:
    async with open_client(served.path) as client:
        message = {"sandbox_id": "probe", "options": {"sim": {PROBE: 1}}}
        refused = await refusal(client, "sandboxd.v1.Controller", "Create", message)
    assert refused is not None
    known = re.search(r"unknown setting \(known: ([^)]*)\)", refused)
    assert known is not None, refused
    settings = set(known.group(1).split(", "))
    assert settings == table_keys((DOCS / "sandboxers.md").read_text(), "## `sim`")


# -- the byte-level examples ---------------------------------------------------------------------


def hex_examples(text: str) -> list[bytes]:
    """The bytes of every code block written as hex dumps (hex pairs, then a comment)."""
    examples = []
    for block in re.findall(r"```\n(.*?)```", text, flags=re.S):
        data = bytearray()
        for line in block.splitlines():
            for token in line.split():
                if not re.fullmatch(r"[0-9a-f]{2}", token):
                    break
                data.append(int(token, 16))
        if data:
            examples.append(bytes(data))
    return examples


def test_the_byte_level_examples_are_what_sandboxd_encodes() -> None:
    examples = hex_examples((DOCS / "wire.md").read_text())
    assert len(examples) == 10
    for example in examples:
        decoder = FrameDecoder()
        (frame,) = decoder.feed(example)
        assert decoder.buffered == 0, example.hex(" ")
        assert isinstance(frame, Frame) and frame.type in set(FrameType)
        payload = frame.payload
        if frame.type == FrameType.REQUEST:
            request = decode_request(payload)
            assert payload == encode_request(
                request.service,
                request.method,
                request.payload,
                request.timeout_nano,
                request.metadata,
            )
            assert (
                request.payload == b"" or dumps(loads_strict(request.payload)) == request.payload
            )
        elif frame.type == FrameType.RESPONSE:
            envelope = loads_strict(payload)
            if "status" in envelope:
                status = envelope["status"]
                assert payload == encode_error(
                    status["code"], status["message"], status["details"]
                )
            else:
                inner = envelope["payload"]
                assert payload == encode_response(inner) and dumps(loads_strict(inner)) == inner
        else:
            assert payload == b"" or dumps(loads_strict(payload)) == payload


def test_every_protocol_document_is_linked_from_the_index() -> None:
    index = (DOCS.parent / "PROTOCOL.md").read_text()
    for document in ("wire.md", "services.md", "sandboxers.md"):
        assert f"](docs/{document})" in index


# -- links ---------------------------------------------------------------------------------------


def anchors(text: str) -> set[str]:
    """The anchors a Markdown renderer makes of the headings (GitHub's rule)."""
    found = set()
    for heading in re.findall(r"^#+ (.*)$", text, flags=re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")
        found.add(slug)
    return found


@pytest.mark.parametrize("document", ["PROTOCOL.md", "wire.md", "services.md", "sandboxers.md"])
def test_every_link_between_the_protocol_documents_resolves(document: str) -> None:
    source = DOCS.parent / document if document == "PROTOCOL.md" else DOCS / document
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", source.read_text()):
        if target.startswith("http"):
            continue
        file, _, anchor = target.partition("#")
        linked = (source.parent / file).resolve() if file else source
        resolves = linked.exists() and (not anchor or anchor in anchors(linked.read_text()))
        if not resolves:
            broken.append(target)
    assert broken == []
