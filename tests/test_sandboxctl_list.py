"""``sandboxctl list`` prints every sandbox, however many pages List answers in.

A Controller served from a thread (:func:`sandboxd.testing.serve_in_thread`) holds more
``sim`` sandboxes than one page of List carries by default; ``sandboxctl`` runs as the
installed executable, in a subprocess, as a shell would run it.
"""

from __future__ import annotations

import json
import random
import subprocess
from collections.abc import Iterator

import pytest

from daemons import BIN
from sandboxd._models import DEFAULT_LIST_LIMIT
from sandboxd.api import SyncController
from sandboxd.backends import SimBackend
from sandboxd.testing import serve_in_thread

SANDBOXCTL = str(BIN / "sandboxctl")
#: More sandboxes than two default pages.
COUNT = 2 * DEFAULT_LIST_LIMIT + 321
#: Seconds a sandboxctl run may take before the test fails.
RUN_LIMIT = 30.0


@pytest.fixture(scope="module")
def crowded() -> Iterator[tuple[str, list[str]]]:
    """A served controller with COUNT sandboxes, created in no particular order (one in
    seven labelled ``tier=web``); yields its socket and the ids."""
    ids = [f"crowd-{n:05d}" for n in range(COUNT)]
    random.Random(16).shuffle(ids)
    with (
        serve_in_thread(backends=[SimBackend()], default_sandboxer="sim") as path,
        SyncController(path) as ctl,
    ):
        for n, sandbox_id in enumerate(ids):
            ctl.create(sandbox_id, labels={"tier": "web"} if n % 7 == 0 else None)
        yield path, ids


def sandboxctl(path: str, *args: str) -> str:
    return subprocess.check_output(
        [SANDBOXCTL, "--socket", path, *args], text=True, timeout=RUN_LIMIT
    )


def test_list_prints_every_sandbox_once_in_id_order(crowded: tuple[str, list[str]]) -> None:
    path, ids = crowded
    header, *lines = sandboxctl(path, "list").splitlines()
    assert header.split()[:2] == ["SANDBOX", "ID"]
    assert [line.split()[0] for line in lines] == sorted(ids)
    assert {line.split()[1] for line in lines} == {"created"}


def test_list_json_and_label_filter_page_through_too(crowded: tuple[str, list[str]]) -> None:
    path, ids = crowded
    listed = json.loads(sandboxctl(path, "--json", "list"))["sandboxes"]
    assert [status["sandbox_id"] for status in listed] == sorted(ids)
    web = sandboxctl(path, "list", "--label", "tier=web").splitlines()[1:]
    assert [line.split()[0] for line in web] == sorted(ids[::7])
