"""The generated protobuf modules checked in (src/sandboxd/proto/*_pb2.py) are what
tools/gen-proto makes of the .proto files beside them, docs/proto publishes those files, and
only the protobuf services load protobuf."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO = ROOT / "src" / "sandboxd" / "proto"


def test_the_generated_modules_are_current(tmp_path: Path) -> None:
    subprocess.run(
        [str(ROOT / "tools" / "gen-proto"), str(tmp_path)],
        check=True,
        env={**os.environ, "PYTHON": sys.executable},
        capture_output=True,
    )
    made = sorted(tmp_path.glob("sandboxd/proto/*_pb2.py"))
    assert [p.name for p in made] == sorted(p.stem + "_pb2.py" for p in PROTO.glob("*.proto"))
    for generated in made:
        checked_in = PROTO / generated.name
        assert checked_in.read_bytes() == generated.read_bytes(), (
            f"{checked_in} is stale: run tools/gen-proto"
        )
    assert sorted(p.name for p in PROTO.glob("*_pb2.py")) == [p.name for p in made]


def test_the_docs_publish_every_proto_file() -> None:
    docs = ROOT / "docs" / "proto"
    assert sorted(p.name for p in docs.glob("*.proto")) == sorted(
        p.name for p in PROTO.glob("*.proto")
    )
    for published in docs.glob("*.proto"):
        assert published.read_bytes() == (PROTO / published.name).read_bytes()


def test_the_cbor_server_and_clients_do_not_import_protobuf() -> None:
    code = (
        "import sys, sandboxd, sandboxd.api, sandboxd.aio\n"
        "from sandboxd.api import controller_service, serve_controller, RemoteController\n"
        "from sandboxd.api import SyncController, AsyncController\n"
        "from sandboxd.rpc import Server\n"
        "loaded = [m for m in sys.modules if m.startswith(('google', 'sandboxd.proto'))]\n"
        "assert not loaded, loaded\n"
        "import sandboxd.api._pb_services\n"
        "assert 'google.protobuf' in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
