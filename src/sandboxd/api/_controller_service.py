"""``sandboxd.v1.Controller``: the Controller contract bound to RPC methods.

Queries (Status, Platform, Ping, List) are answered inline by the connection's reader: no
task per call.  Create and the calls that wait on a sandbox (Start, Stop, Wait, Shutdown) are
deferred: the reader hands the call's responder to the sandbox's actor (or, for Create, to the
state store) and whoever finishes the work answers it, still without a task per call.
Metrics, which reads /proc in a worker thread, runs in a task of its own under the caller's
deadline; Events is a server stream, subscribed as its request is read.  The data plane
(Exec and the others) is in ``_data_service``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Final, cast

from .._errors import NotFound, ResourceExhausted
from .._models import ListPage, SandboxStatus
from ..rpc import (
    CallContext,
    Encoded,
    Message,
    MessageSender,
    Method,
    Responder,
    deferred,
    inline,
    server_stream,
    unary,
)
from ..runtime import Controller, Subscription
from ..wire import MAX_PAYLOAD, dumps
from ._convert import (
    check_fields,
    create_request,
    event_message,
    exit_message,
    id_request,
    instance_message,
    list_request,
    metrics_message,
    platform_message,
    status_message,
    status_request,
    stop_request,
)
from ._data_service import DataPlane, data_plane_methods

#: The empty message, encoded once: the answer of Stop, Shutdown and Ping.
_EMPTY: Final = Encoded(dumps({}))


#: The most bytes of statuses in one List reply: the frame limit, less room for the rest of
#: the reply (its keys, the next page's token) and the response envelope.
_LIST_BYTES: Final = MAX_PAYLOAD - 1024
_SANDBOXES: Final = dumps("sandboxes")
_NEXT_PAGE_TOKEN: Final = dumps("next_page_token")


def _list_reply(page: ListPage, encode: Callable[[SandboxStatus], bytes]) -> Encoded:
    """The List response of ``page``, its statuses encoded by ``encode`` and joined (cached
    statuses are not encoded again).  A page that would not fit in a frame is cut short, the
    next page starting after the last sandbox kept (a token stands for the id it ends with)."""
    statuses = page.sandboxes
    token = page.next_page_token
    items: list[bytes] = []
    room = _LIST_BYTES
    for status in statuses:
        item = encode(status)
        room -= len(item)
        if room < 0:
            if not items:
                raise ResourceExhausted(
                    f"List: the status of {status.sandbox_id!r} alone is over the frame limit"
                )
            token = statuses[len(items) - 1].sandbox_id
            break
        items.append(item)
    # An array's head is an unsigned integer's with major type 4 (0x80) in place of 0.
    count = dumps(len(items))
    head = [
        b"\xa1" if token is None else b"\xa2",
        _SANDBOXES,
        bytes((count[0] | 0x80,)),
        count[1:],
    ]
    tail = [] if token is None else [_NEXT_PAGE_TOKEN, dumps(token)]
    return Encoded(b"".join(head + items + tail))


def _created(sandbox_id: str) -> Mapping[str, Any]:
    return {"sandbox_id": sandbox_id}


def _empty(_: None) -> Encoded:
    return _EMPTY


def controller_service(controller: Controller) -> dict[str, Method]:
    """The methods of ``sandboxd.v1.Controller``, served by ``controller`` (the data plane's
    by its ``exec``, ``exec_sync``, ``logs``, ``write_file`` and ``read_file``).

        A :class:`~sandboxd.Controller` is served without a task per call (its ``request_*``
        methods take the call's responder).  Any other object with the Controller's methods (a
        wrapper that changes some, say) is served too, the calls that wait each in a task of
        their own that awaits its async method.
    """

    def create(msg: Message, ctx: CallContext, reply: Responder) -> None:
        controller.request_create(reply, **create_request(msg))

    def start(msg: Message, ctx: CallContext, reply: Responder) -> None:
        controller.request_start(reply, id_request(msg, "Start"))

    def platform(msg: Message, ctx: CallContext) -> Mapping[str, Any]:
        return platform_message(controller.platform_nowait(id_request(msg, "Platform")))

    def stop(msg: Message, ctx: CallContext, reply: Responder) -> None:
        sandbox_id, timeout_secs = stop_request(msg)
        controller.request_stop(reply, sandbox_id, timeout_secs=timeout_secs)

    def wait(msg: Message, ctx: CallContext, reply: Responder) -> None:
        controller.request_wait(reply, id_request(msg, "Wait"))

    # The encoded answer to a non-verbose Status, per sandbox, for as long as the actor
    # publishes the same snapshot: a sandbox polled in a loop, or listed again, is encoded
    # once per change.
    encoded_status: dict[str, tuple[SandboxStatus, Encoded]] = {}

    def encode_status(snapshot: SandboxStatus) -> Encoded:
        sandbox_id = snapshot.sandbox_id
        cached = encoded_status.get(sandbox_id)
        if cached is not None and cached[0] is snapshot:
            return cached[1]
        if len(encoded_status) > 2 * len(controller) + 1024:
            encoded_status.clear()  # forget sandboxes deleted since they were last asked about
        encoded = Encoded(dumps(status_message(snapshot)))
        encoded_status[sandbox_id] = (snapshot, encoded)
        return encoded

    def status(msg: Message, ctx: CallContext) -> Mapping[str, Any] | Encoded:
        sandbox_id: Any = msg.get("sandbox_id")  # a str where ``cached`` is found
        cached = encoded_status.get(sandbox_id) if type(sandbox_id) is str else None
        if cached is not None and (
            len(msg) == 1 or (len(msg) == 2 and msg.get("verbose") is False)
        ):
            # A non-verbose Status of an id asked about before: checked then.  (A protobuf
            # request always carries ``verbose``.)
            verbose = False
        else:
            sandbox_id, verbose = status_request(msg)
        try:
            snapshot = controller.status_nowait(sandbox_id, verbose=verbose)
        except NotFound:
            encoded_status.pop(sandbox_id, None)
            raise
        if verbose:
            return status_message(snapshot)
        if cached is not None and cached[0] is snapshot:
            return cached[1]
        return encode_status(snapshot)

    def shutdown(msg: Message, ctx: CallContext, reply: Responder) -> None:
        controller.request_shutdown(reply, id_request(msg, "Shutdown"))

    def ping(msg: Message, ctx: CallContext) -> Encoded:
        controller.ping_nowait(id_request(msg, "Ping"))
        return _EMPTY

    def list_(msg: Message, ctx: CallContext) -> Encoded:
        labels, limit, page_token = list_request(msg)
        page = controller.list_page_nowait(labels, limit=limit, page_token=page_token)
        return _list_reply(page, encode_status)

    async def metrics(msg: Message, ctx: CallContext) -> Mapping[str, Any]:
        return metrics_message(await controller.metrics(id_request(msg, "Metrics")))

    def subscribe(msg: Message, ctx: CallContext) -> Subscription:
        # Subscribed as the request is read: no event caused by a later request is missed.
        check_fields(msg, frozenset(), "Events")
        return controller.subscribe()

    async def events(subscription: Subscription, ctx: CallContext, stream: MessageSender) -> None:
        with subscription:
            async for event in subscription:
                await stream.send(event_message(event))

    methods = {
        "Create": deferred(create, _created),
        "Start": deferred(start, instance_message),
        "Platform": inline(platform),
        "Stop": deferred(stop, _empty),
        "Wait": deferred(wait, exit_message),
        "Status": inline(status),
        "Shutdown": deferred(shutdown, _empty),
        "Ping": inline(ping),
        "List": inline(list_),
        "Metrics": unary(metrics),
        "Events": server_stream(events, prepare=subscribe),
        **data_plane_methods(cast(DataPlane, controller)),
    }
    if not isinstance(controller, Controller):
        methods.update(_awaited_calls(controller))
    return methods


def _awaited_calls(controller: Controller) -> dict[str, Method]:
    """The calls that wait, through the async methods of a Controller look-alike."""

    async def create(msg: Message, ctx: CallContext) -> Mapping[str, Any]:
        return _created(await controller.create(**create_request(msg)))

    async def start(msg: Message, ctx: CallContext) -> Mapping[str, Any]:
        return instance_message(await controller.start(id_request(msg, "Start")))

    async def stop(msg: Message, ctx: CallContext) -> Encoded:
        sandbox_id, timeout_secs = stop_request(msg)
        await controller.stop(sandbox_id, timeout_secs=timeout_secs)
        return _EMPTY

    async def wait(msg: Message, ctx: CallContext) -> Mapping[str, Any]:
        return exit_message(await controller.wait(id_request(msg, "Wait")))

    async def shutdown(msg: Message, ctx: CallContext) -> Encoded:
        await controller.shutdown(id_request(msg, "Shutdown"))
        return _EMPTY

    return {
        "Create": unary(create),
        "Start": unary(start),
        "Stop": unary(stop),
        "Wait": unary(wait),
        "Shutdown": unary(shutdown),
    }
