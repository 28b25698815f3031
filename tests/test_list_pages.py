"""List in pages: any number of sandboxes, through every client.

The server is a real Controller with the ``sim`` backend, served on a Unix socket by the
test's own trio loop; the blocking and asyncio clients call it from worker threads, as
programs of their own would.  Every client is asked the same things: the in-process
Controller, RemoteController (trio), SyncController and AsyncController (asyncio).
"""

from __future__ import annotations

import asyncio
import gc
import random
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import attrs
import outcome
import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

import sandboxd.aio
import sandboxd.runtime._controller as controller_module
from sandboxd import (
    DeadlineExceeded,
    Internal,
    InvalidArgument,
    ListPage,
    ResourceExhausted,
    SyncController,
    connect,
    serve_controller,
)
from sandboxd._models import DEFAULT_LIST_LIMIT, MAX_LIST_LIMIT
from sandboxd.api import CONTROLLER_SERVICE
from sandboxd.backends import SimBackend
from sandboxd.rpc import open_client
from sandboxd.runtime import Controller, open_controller
from sandboxd.runtime._index import SandboxIndex
from sandboxd.wire import MAX_PAYLOAD
from test_fuzz import Wrapper

CLIENTS = ("in-process", "trio", "sync", "asyncio")
#: The issue's figure: List must serve this many sandboxes through every client.
MANY = 100_000


@asynccontextmanager
async def serving(path: str, served: Any = None, **options: Any) -> AsyncIterator[Controller]:
    """A running Controller with the ``sim`` backend (the default sandboxer), served on
    ``path`` itself or through ``served(controller)``, a look-alike."""
    async with (
        open_controller(backends=[SimBackend()], default_sandboxer="sim", **options) as ctl,
        trio.open_nursery() as nursery,
    ):
        await nursery.start(serve_controller, ctl if served is None else served(ctl), path)
        yield ctl
        nursery.cancel_scope.cancel()


async def call(
    client: str, controller: Controller, path: str, method: str, *args: Any, **kw: Any
) -> Any:
    """``client``'s ``method(*args, **kw)``: the in-process controller's, or that of a client
    connected to ``path`` for the call (the blocking and asyncio ones in a thread)."""
    if client == "in-process":
        return await getattr(controller, method)(*args, **kw)
    if client == "trio":
        async with connect(path) as remote:
            # Raised outside the block, not wrapped in the connection's exception group.
            result = await outcome.acapture(getattr(remote, method), *args, **kw)
        return result.unwrap()
    if client == "sync":

        def blocking() -> Any:
            with SyncController(path) as ctl:
                return getattr(ctl, method)(*args, **kw)

        return await trio.to_thread.run_sync(blocking)

    async def on_asyncio() -> Any:
        async with sandboxd.aio.connect(path) as ctl:
            return await getattr(ctl, method)(*args, **kw)

    return await trio.to_thread.run_sync(asyncio.run, on_asyncio())


def ids(statuses: Any) -> list[str]:
    return [status.sandbox_id for status in statuses]


# -- any number --------------------------------------------------------------------------------


@contextmanager
def collector_paused() -> Iterator[None]:
    """No cyclic garbage collection in the block.  A hundred thousand actors are millions of
    objects, and a full collection walks them all (1.5 s on a quiet machine, several times
    over while they are made): the collector's cost, paid by anything that allocates, not
    List's, which the test is about."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


async def test_a_hundred_thousand_sandboxes_are_listed_by_every_client(sock_path: str) -> None:
    names = [f"sb-{n:06d}" for n in range(MANY)]
    random.Random(MANY).shuffle(names)
    with collector_paused():
        timings = await list_many(sock_path, names)
    print(", ".join(f"{what} {seconds:.2f} s" for what, seconds in timings.items()))


async def list_many(sock_path: str, names: list[str]) -> dict[str, float]:
    """Create sandboxes ``names``, have every client list them, and return how long each
    took (and the creation, and the controller's teardown)."""
    began = time.perf_counter()
    async with serving(sock_path, max_sandboxes=len(names)) as controller:
        for name in names:
            controller.create_nowait(name)
        await trio.testing.wait_all_tasks_blocked()
        timings = {"create": time.perf_counter() - began}
        expected = sorted(names)
        for client in CLIENTS:
            began = time.perf_counter()
            listed = await call(client, controller, sock_path, "list")
            timings[client] = time.perf_counter() - began
            assert ids(listed) == expected, client
        began = time.perf_counter()
    timings["teardown"] = time.perf_counter() - began
    return timings


@pytest.mark.parametrize("client", CLIENTS)
async def test_pages_end_at_limit_and_only_the_last_has_no_token(
    sock_path: str, client: str
) -> None:
    async with serving(sock_path) as controller:
        for name in ("g", "c", "a", "e", "b", "f", "d"):
            controller.create_nowait(name)

        async def page(**kw: Any) -> ListPage:
            result: ListPage = await call(client, controller, sock_path, "list_page", **kw)
            assert type(result) is ListPage
            return result

        first = await page(limit=3)
        assert ids(first.sandboxes) == ["a", "b", "c"] and first.next_page_token is not None
        second = await page(limit=3, page_token=first.next_page_token)
        assert ids(second.sandboxes) == ["d", "e", "f"] and second.next_page_token is not None
        last = await page(limit=3, page_token=second.next_page_token)
        assert ids(last.sandboxes) == ["g"] and last.next_page_token is None
        # A page that ends with the last sandbox says so; an empty token is the first page.
        assert (await page(limit=7)).next_page_token is None
        assert ids((await page(page_token="")).sandboxes) == list("abcdefg")
        assert await page(page_token=first.next_page_token, limit=MAX_LIST_LIMIT) == ListPage(
            second.sandboxes + last.sandboxes
        )


async def test_without_a_limit_a_page_holds_the_default_number(sock_path: str) -> None:
    async with serving(sock_path) as controller:
        for n in range(DEFAULT_LIST_LIMIT + 1):
            controller.create_nowait(f"d{n:05d}")
        async with open_client(sock_path) as raw:
            reply = await raw.call(CONTROLLER_SERVICE, "List", {})
            assert len(reply["sandboxes"]) == DEFAULT_LIST_LIMIT
            assert reply["next_page_token"] == f"d{DEFAULT_LIST_LIMIT - 1:05d}"
            rest = await raw.call(
                CONTROLLER_SERVICE, "List", {"page_token": reply["next_page_token"]}
            )
            assert "next_page_token" not in rest
            assert [s["sandbox_id"] for s in rest["sandboxes"]] == [f"d{DEFAULT_LIST_LIMIT:05d}"]


# -- bad requests --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("limit", 0),
        ("limit", -1),
        ("limit", MAX_LIST_LIMIT + 1),
        ("limit", 2**64 - 1),
        ("limit", 1.0),
        ("limit", True),
        ("limit", "5"),
        ("page_token", 5),
        ("page_token", b"a"),
        ("page_token", "not/a token"),
        ("page_token", "a" * 77),
        ("page_token", "-a"),
    ],
)
async def test_a_bad_limit_or_page_token_is_invalid_argument_naming_it(
    sock_path: str, field: str, value: Any
) -> None:
    async with serving(sock_path) as controller, open_client(sock_path) as raw:
        controller.create_nowait("one")
        with pytest.raises(InvalidArgument, match=rf"^List\.{field}: "):
            await raw.call(CONTROLLER_SERVICE, "List", {field: value})


@pytest.mark.parametrize("client", CLIENTS)
async def test_every_client_refuses_a_bad_limit_or_token(sock_path: str, client: str) -> None:
    async with serving(sock_path) as controller:
        for kw, field in (
            ({"limit": 0}, "limit"),
            ({"limit": MAX_LIST_LIMIT + 1}, "limit"),
            ({"page_token": "not a token"}, "page_token"),
        ):
            with pytest.raises(InvalidArgument, match=rf"\b{field}: ") as refused:
                await call(client, controller, sock_path, "list_page", **kw)
            assert field in refused.value.message


# -- stability -----------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(3))
async def test_paging_is_stable_under_creates_and_shutdowns_between_pages(
    sock_path: str, seed: int
) -> None:
    """Between every two pages, sandboxes are created (before and after the page boundary)
    and shut down: those that exist throughout are listed exactly once, nothing twice."""
    rng = random.Random(seed)
    pool = [f"s{n:04d}" for n in range(900)]
    async with serving(sock_path) as controller, connect(sock_path) as remote:
        alive = set(rng.sample(pool, 500))
        for name in alive:
            controller.create_nowait(name)
        throughout = set(alive)
        ever = set(alive)
        seen: list[str] = []
        token = None
        while True:
            page = await remote.list_page(limit=rng.randint(1, 40), page_token=token)
            seen += ids(page.sandboxes)
            token = page.next_page_token
            if token is None:
                break
            for name in rng.sample(pool, 12):
                if name in alive:
                    await controller.shutdown(name)
                    alive.discard(name)
                    throughout.discard(name)
                else:
                    controller.create_nowait(name)
                    alive.add(name)
                    ever.add(name)
    assert seen == sorted(set(seen)), "listed twice or out of order"
    assert throughout <= set(seen) <= ever


@attrs.frozen
class Churn:
    """A step between two pages: create or shut down ``name``, or fetch a page of ``limit``."""

    action: str
    name: str = ""
    limit: int = 1


_NAMES = st.sampled_from([f"n{n:02d}" for n in range(40)])
_STEPS = st.one_of(
    st.builds(Churn, st.just("toggle"), _NAMES),
    st.builds(Churn, st.just("page"), limit=st.integers(1, 6)),
)


@settings(max_examples=60, deadline=None)
@given(start=st.sets(_NAMES), steps=st.lists(_STEPS, max_size=60))
def test_paging_is_stable_whatever_the_interleaving(start: set[str], steps: list[Churn]) -> None:
    """The in-process Controller, with any interleaving of pages, creates (of new ids and of
    ids shut down before) and shutdowns."""

    async def main() -> None:
        async with open_controller(backends=[SimBackend()], default_sandboxer="sim") as ctl:
            for name in start:
                ctl.create_nowait(name)
            alive, throughout, ever = set(start), set(start), set(start)
            seen: list[str] = []
            token: str | None = None
            done = False
            # Then pages until the listing ends: at most 40 ids, 6 a page.
            for step in [*steps, *[Churn("page", limit=6)] * 7]:
                if step.action == "page" and not done:
                    page = ctl.list_page_nowait(limit=step.limit, page_token=token)
                    seen += ids(page.sandboxes)
                    token = page.next_page_token
                    done = token is None
                elif step.action == "toggle" and step.name in alive:
                    await ctl.shutdown(step.name)
                    alive.discard(step.name)
                    throughout.discard(step.name)
                elif step.action == "toggle":
                    ctl.create_nowait(step.name)
                    alive.add(step.name)
                    ever.add(step.name)
            assert done
            assert seen == sorted(set(seen))
            assert throughout <= set(seen) <= ever

    trio.run(main)


@settings(max_examples=150, deadline=None)
@given(
    slack=st.integers(0, 4),
    steps=st.lists(st.tuples(st.sampled_from("+-?"), st.integers(0, 30)), max_size=80),
)
def test_the_index_gives_every_live_id_in_order_once(
    slack: int, steps: list[tuple[str, int]]
) -> None:
    """The sorted index under any mix of adds, deletes and reads, with a small slack so that
    rebuilds, merges and dropping the index all happen."""
    live: dict[str, None] = {}
    index = SandboxIndex(live, slack=slack)
    for op, n in steps:
        name = f"i{n:02d}"
        if op == "+" and name not in live:
            live[name] = None
            index.add(name)
        elif op == "-":
            live.pop(name, None)
        else:
            start = None if n % 3 == 0 else name
            got = list(index.after(start))
            assert got == sorted(set(got)), "not in order, or twice"
            expected = sorted(i for i in live if start is None or i > start)
            assert [i for i in got if i in live] == expected


# -- pages cut short -----------------------------------------------------------------------------


class Bulky(Wrapper):
    """A Controller look-alike whose statuses carry ``size`` bytes each."""

    def __init__(self, controller: Controller, size: int) -> None:
        super().__init__(controller)
        self._size = size

    def list_page_nowait(self, labels: Any = None, **kw: Any) -> ListPage:
        page = self._controller.list_page_nowait(labels, **kw)
        extra = {"blob": "x" * self._size}
        bulky = tuple(attrs.evolve(status, extra=extra) for status in page.sandboxes)
        return ListPage(bulky, page.next_page_token)


@pytest.mark.parametrize("client", ["trio", "sync", "asyncio"])
async def test_a_page_too_big_for_a_frame_is_cut_short(sock_path: str, client: str) -> None:
    names = [f"big{n:02d}" for n in range(30)]
    async with serving(sock_path, lambda ctl: Bulky(ctl, 400_000)) as controller:
        for name in names:
            controller.create_nowait(name)
        async with open_client(sock_path) as raw:
            encoded = await raw.call_encoded(CONTROLLER_SERVICE, "List", {"limit": 30})
            assert len(encoded) <= MAX_PAYLOAD
        page = await call(client, controller, sock_path, "list_page", limit=30)
        assert 0 < len(page.sandboxes) < 30 and page.next_page_token is not None
        listed = await call(client, controller, sock_path, "list")
        assert ids(listed) == names
        assert all(len(status.extra["blob"]) == 400_000 for status in listed)


async def test_a_status_alone_over_the_frame_limit_is_resource_exhausted(sock_path: str) -> None:
    async with serving(sock_path, lambda ctl: Bulky(ctl, MAX_PAYLOAD)) as controller:
        controller.create_nowait("huge")
        async with connect(sock_path) as remote:
            with pytest.raises(ResourceExhausted, match="'huge' alone is over the frame limit"):
                await remote.list()


class Stuck(Wrapper):
    """A look-alike whose List always says that more follows, at the same place."""

    def list_page_nowait(self, labels: Any = None, **kw: Any) -> ListPage:
        return ListPage((), "same")


@pytest.mark.parametrize("client", ["trio", "sync", "asyncio"])
async def test_a_server_giving_the_same_token_again_is_internal(
    sock_path: str, client: str
) -> None:
    async with serving(sock_path, Stuck) as controller:
        with pytest.raises(Internal, match="page token 'same' again"):
            await call(client, controller, sock_path, "list")


class Endless(Wrapper):
    """A look-alike whose List never ends: every page is empty and says that more follow."""

    def list_page_nowait(self, labels: Any = None, **kw: Any) -> ListPage:
        token = kw.get("page_token") or "t0"
        return ListPage((), f"t{int(token[1:]) + 1}")


@pytest.mark.parametrize("client", ["sync", "asyncio"])
async def test_a_timeout_bounds_the_whole_listing(sock_path: str, client: str) -> None:
    async with serving(sock_path, Endless) as controller:
        with pytest.raises(DeadlineExceeded):
            await call(client, controller, sock_path, "list", timeout=0.2)


# -- labels --------------------------------------------------------------------------------------


@pytest.mark.parametrize("client", CLIENTS)
async def test_labels_filter_every_page(
    sock_path: str, client: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A page looks at no more than 40 sandboxes: a rare label gives short pages, even empty
    # ones, that are not the last.
    monkeypatch.setattr(controller_module, "LIST_SCAN_LIMIT", 40)
    async with serving(sock_path) as controller:
        for n in range(300):
            labels = {"app": "web" if n % 3 == 0 else "db", "rare": str(n % 97 == 5)}
            controller.create_nowait(f"l{n:03d}", labels=labels)
        web = [f"l{n:03d}" for n in range(0, 300, 3)]
        rare = ["l005", "l102", "l199", "l296"]
        assert ids(await call(client, controller, sock_path, "list", {"app": "web"})) == web
        assert ids(await call(client, controller, sock_path, "list", {"rare": "True"})) == rare
        assert await call(client, controller, sock_path, "list", {"app": "none"}) == []
        seen: list[str] = []
        pages: list[ListPage] = []
        token = None
        while not pages or token is not None:
            page = await call(
                client, controller, sock_path, "list_page", {"rare": "True"}, page_token=token
            )
            pages.append(page)
            seen += ids(page.sandboxes)
            token = page.next_page_token
        assert seen == rare
        assert len(pages) == 300 // 40 + 1
        assert any(not page.sandboxes for page in pages)
