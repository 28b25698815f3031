"""The protobuf services: ``containerd.runtime.sandbox.v1.Sandbox``, and ``sandboxd.v1.Runtime``
and ``sandboxd.v1.Controller`` in protobuf, for the server's protobuf envelope.

Every method is its CBOR twin (``_controller_service``, ``_data_service``,
``_runtime_service``) behind a codec: the request's payload is read into the CBOR message
shape (``_pb_convert``), the CBOR handler runs it, as it is (inline, deferred, in a task,
streaming), and its answer is written as the protobuf response.  So both envelopes share one
behaviour: the same actors, checks, errors and ways of running.  Handlers take the payload as
bytes and return bytes; streams send and receive bytes.

Streams end as ttrpc ones do: what a CBOR server stream or exec returns as its final message
is sent as the last message of the stream (Exec's ``exit``, ReadFile's ``size``), and the
handler returns nothing.  The opening message of Exec and WriteFile is the request's payload,
or, when that is empty (as ttrpc's generated clients send it), the stream's first message.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Mapping
from functools import partial
from typing import Any, Final, cast, final

from google.protobuf.any_pb2 import Any as AnyMessage
from google.protobuf.message_factory import GetMessageClass

from .._errors import InvalidArgument
from .._models import ANNOTATION_INFO_PREFIX
from ..proto import containerd_sandbox_pb2 as sandbox_pb
from ..proto import containerd_types_pb2 as types_pb
from ..proto import sandboxd_pb2 as pb
from ..rpc import (
    CallContext,
    Encoded,
    Limits,
    Method,
    MethodKind,
    ReceivedMessages,
)
from ..runtime import Controller
from ._client_common import CONTROLLER_SERVICE, RUNTIME_SERVICE
from ._controller_service import controller_service
from ._pb_convert import TYPE_URL_PREFIX, any_type, encode, fields, parse, request
from ._runtime_service import runtime_service

#: containerd's sandbox service.
SANDBOX_SERVICE: Final = sandbox_pb.DESCRIPTOR.services_by_name["Sandbox"].full_name

#: The Any type URLs sandboxd reads in CreateSandbox's ``options`` and writes in a Metric.
SANDBOX_OPTIONS_TYPE: Final = TYPE_URL_PREFIX + pb.SandboxOptions.DESCRIPTOR.full_name
CREATE_OPTIONS_TYPE: Final = TYPE_URL_PREFIX + pb.CreateOptions.DESCRIPTOR.full_name
METRICS_TYPE: Final = TYPE_URL_PREFIX + pb.SandboxMetrics.DESCRIPTOR.full_name
#: The Any type URL of one detail of an error's status (its ``cbor`` field: one CBOR item).
ERROR_DETAIL_TYPE: Final = TYPE_URL_PREFIX + pb.ErrorDetail.DESCRIPTOR.full_name

#: Annotations under which CreateSandbox keeps what it does not act on; the ``info`` ones are
#: reported in Status info as ``bundle_path`` and ``options_type``.
BUNDLE_PATH_ANNOTATION: Final = ANNOTATION_INFO_PREFIX + "bundle_path"
OPTIONS_TYPE_ANNOTATION: Final = ANNOTATION_INFO_PREFIX + "options_type"
OPTIONS_VALUE_ANNOTATION: Final = "sandboxd.io/options"

Read = Callable[[bytes], dict[str, Any]]
Write = Callable[[Any], bytes]

#: What a stream handler gets when the opening message is still to come on the stream.
_OPENS_ON_STREAM: Final = object()


_FLAT: Final = (str, int, bool, float, bytes)


def _inline(handler: Callable[..., Any], read: Read, write: Write) -> Callable[..., bytes]:
    """An inline CBOR ``handler`` taking and answering protobuf, remembering what a small
    request of flat fields (Status, Ping of one id, say) reads to, each call getting a copy of
    its own, and what an already encoded CBOR answer (the CBOR services cache their Status and
    Ping answers so) converts to: a sandbox polled in a loop is parsed once, and its answer
    converted once per change."""
    requests: dict[bytes, dict[str, Any]] = {}
    answers: dict[bytes, bytes] = {}

    def call(payload: bytes, ctx: CallContext) -> bytes:
        message = requests.get(payload)
        if message is not None:
            message = message.copy()
        else:
            message = read(payload)
            if len(payload) <= 256 and all(type(v) in _FLAT for v in message.values()):
                if len(requests) >= 1024:
                    requests.clear()
                requests[payload] = message.copy()
        values = handler(message, ctx)
        if type(values) is not Encoded:
            return write(values)
        answer = answers.get(values)
        if answer is None:
            if len(answers) >= 4096:
                answers.clear()
            answer = answers[values] = write(values)
        return answer

    return call


@final
class _Stream(ReceivedMessages):
    """A CBOR handler's view of a protobuf stream: messages in and out in the CBOR shape."""

    __slots__ = ("_read", "_stream", "_write")

    def __init__(self, stream: Any, read: Read, write: Write) -> None:
        self._stream = stream
        self._read = read
        self._write = write

    async def send(self, message: Mapping[str, Any]) -> None:
        await self._stream.send(self._write(message))

    async def receive(self) -> dict[str, Any] | None:
        data = await self._stream.receive()
        return None if data is None else self._read(data)


def _opening(message: Mapping[str, Any], where: str) -> Any:
    if set(message) != {"start"}:
        raise InvalidArgument(f"{where}: the opening message must set 'start', and only it")
    return message["start"]


def _wrap(method: Method, read: Read, write: Write, where: str) -> Method:
    """``method``, a CBOR one, taking and answering protobuf (see the module's docstring)."""
    kind = method.kind
    handler = method.handler
    if kind is MethodKind.INLINE:
        return Method(kind, _inline(handler, read, write))
    if kind is MethodKind.UNARY:

        async def unary(payload: bytes, ctx: CallContext) -> bytes:
            return write(await handler(read(payload), ctx))

        return Method(kind, unary)
    if kind is MethodKind.DEFERRED:
        result = method.result
        assert result is not None
        return Method(
            kind,
            lambda payload, ctx, reply: handler(read(payload), ctx, reply),
            result=cast(Any, lambda value: write(result(value))),
        )
    duplex = kind is not MethodKind.SERVER_STREAM
    # A CBOR method's prepare takes the message as a mapping.
    cbor_prepare: Any = method.prepare

    def prepare(payload: bytes, ctx: CallContext) -> Any:
        if duplex and not payload:
            return _OPENS_ON_STREAM
        message = read(payload)
        if duplex:
            message = _opening(message, where)
        return message if cbor_prepare is None else cbor_prepare(message, ctx)

    async def stream(args: Any, ctx: CallContext, messages: Any) -> bytes | None:
        adapted = _Stream(messages, read, write)
        if args is _OPENS_ON_STREAM:
            first = await adapted.receive()
            if first is None:
                raise InvalidArgument(f"{where}: the stream ended before its opening message")
            args = _opening(first, where)
            if cbor_prepare is not None:
                args = cbor_prepare(args, ctx)
        final_message = await handler(args, ctx, adapted)
        if kind is MethodKind.CLIENT_STREAM:
            return write(final_message)
        if final_message is not None:
            await messages.send(write(final_message))
        return None

    return Method(kind, stream, cast(Any, prepare))


def _reader(cls: Any, where: str) -> Read:
    return partial(request, cls, where=where)


def _writer(cls: Any) -> Write:
    return partial(encode, cls)


def _served(
    service: Any,
    methods: Mapping[str, Method],
    twins: Mapping[str, str] | None = None,
    readers: Mapping[str, Read] | None = None,
    writers: Mapping[str, Write] | None = None,
) -> dict[str, Method]:
    """Every method of the protobuf ``service`` (a descriptor), each its CBOR twin in
    ``methods`` (of the same name unless ``twins`` says otherwise) behind a codec: its request
    and response types, unless ``readers`` and ``writers`` have one for it."""
    readers = readers or {}
    writers = writers or {}
    twins = twins or {}
    served = {}
    for method in service.methods:
        name = method.name
        read = readers.get(name) or _reader(GetMessageClass(method.input_type), name)
        write = writers.get(name) or _writer(GetMessageClass(method.output_type))
        served[name] = _wrap(methods[twins.get(name, name)], read, write, name)
    return served


def _exec_output(values: Mapping[str, Any]) -> bytes:
    """One of Exec's CBOR messages as an ExecOutput: started, output, or the exit."""
    if "exec_id" in values:
        values = {"started": values}
    elif "exit_status" in values:
        values = {"exit": values}
    return encode(pb.ExecOutput, values)


def controller_pb_service(
    controller: Controller, cbor: Mapping[str, Method] | None = None
) -> dict[str, Method]:
    """The methods of ``sandboxd.v1.Controller`` in protobuf, served by ``controller`` through
    its CBOR methods ``cbor`` (made by :func:`~sandboxd.api.controller_service` when not
    given)."""
    methods = controller_service(controller) if cbor is None else cbor
    service = pb.DESCRIPTOR.services_by_name["Controller"]
    return _served(service, methods, writers={"Exec": _exec_output})


def runtime_pb_service(
    cgroups: str | None = None, limits: Limits | None = None
) -> dict[str, Method]:
    """``sandboxd.v1.Runtime`` in protobuf: ``Version(Empty) -> VersionResponse``, ``cgroups``
    and ``limits`` as for :func:`~sandboxd.api.runtime_service`."""
    return _served(pb.DESCRIPTOR.services_by_name["Runtime"], runtime_service(cgroups, limits))


# -- containerd.runtime.sandbox.v1.Sandbox -----------------------------------------------------


def _create_sandbox(payload: bytes) -> dict[str, Any]:
    """CreateSandbox as sandboxd.v1's Create message: its options applied when they are
    sandboxd's, kept (in annotations, named in Status info) when they are of another type;
    ``bundle_path`` kept likewise."""
    where = "CreateSandbox"
    req = parse(sandbox_pb.CreateSandboxRequest, payload, where)
    message: dict[str, Any] = {"sandbox_id": req.sandbox_id}
    if req.rootfs:
        message["rootfs"] = [fields(m, f"{where}.rootfs[{i}]") for i, m in enumerate(req.rootfs)]
    if req.netns_path:
        message["netns_path"] = req.netns_path
    kept: dict[str, str] = {}
    if req.bundle_path:
        kept[BUNDLE_PATH_ANNOTATION] = req.bundle_path
    if req.HasField("options"):
        options = req.options
        name = any_type(options.type_url)
        if name == pb.SandboxOptions.DESCRIPTOR.full_name:
            read = parse(pb.SandboxOptions, options.value, f"{where}.options")
            message["options"] = fields(read, "Create.options")
        elif name == pb.CreateOptions.DESCRIPTOR.full_name:
            read = parse(pb.CreateOptions, options.value, f"{where}.options")
            message.update(fields(read, "Create"))
        else:
            kept[OPTIONS_TYPE_ANNOTATION] = options.type_url
            kept[OPTIONS_VALUE_ANNOTATION] = base64.b64encode(options.value).decode()
    if kept:
        message["annotations"] = {**message.get("annotations", {}), **kept}
    return message


def _stop_sandbox(payload: bytes) -> dict[str, Any]:
    """StopSandbox as sandboxd.v1's Stop: a ``timeout_secs`` of 0 is the default grace
    (proto3 cannot tell it from absent, and containerd sends 0 when given no timeout)."""
    message = request(sandbox_pb.StopSandboxRequest, payload, "StopSandbox")
    if message["timeout_secs"] == 0:
        del message["timeout_secs"]
    return message


def _metric(values: Mapping[str, Any] | bytes) -> bytes:
    """sandboxd's metrics as a containerd.types.Metric carrying a sandboxd.v1.SandboxMetrics."""
    metrics = encode(pb.SandboxMetrics, values)
    data = AnyMessage(type_url=METRICS_TYPE, value=metrics)
    parsed = pb.SandboxMetrics.FromString(metrics)
    metric = types_pb.Metric(timestamp=parsed.timestamp, id=parsed.sandbox_id, data=data)
    return sandbox_pb.SandboxMetricsResponse(metrics=metric).SerializeToString()  # type: ignore[no-any-return]


#: containerd's methods whose sandboxd.v1 twin has another name.
_TWINS: Final = {
    "CreateSandbox": "Create",
    "StartSandbox": "Start",
    "StopSandbox": "Stop",
    "WaitSandbox": "Wait",
    "SandboxStatus": "Status",
    "PingSandbox": "Ping",
    "ShutdownSandbox": "Shutdown",
    "SandboxMetrics": "Metrics",
}


def sandbox_service(
    controller: Controller, cbor: Mapping[str, Method] | None = None
) -> dict[str, Method]:
    """The methods of containerd's ``containerd.runtime.sandbox.v1.Sandbox``, served by
    ``controller`` as its sandboxd.v1 twins ``cbor`` are (see docs/services.md, "Protobuf")."""
    methods = controller_service(controller) if cbor is None else cbor
    return _served(
        sandbox_pb.DESCRIPTOR.services_by_name["Sandbox"],
        methods,
        _TWINS,
        readers={"CreateSandbox": _create_sandbox, "StopSandbox": _stop_sandbox},
        writers={"SandboxMetrics": _metric},
    )


def protobuf_services(
    controller: Controller,
    *,
    cgroups: str | None = None,
    cbor: Mapping[str, Method] | None = None,
    limits: Limits | None = None,
) -> dict[str, dict[str, Method]]:
    """Every protobuf service for ``controller``, for the server's ``protobuf_services``:
    containerd's Sandbox, and sandboxd.v1's Runtime (``cgroups`` and ``limits``, the server's,
    as for :func:`~sandboxd.api.runtime_service`) and Controller.

    ``cbor``: the CBOR ``sandboxd.v1.Controller`` methods served beside them, made by
    :func:`~sandboxd.api.controller_service` for ``controller``, to share (their cached Status
    answers); when not given, one set is made for both protobuf Controllers.
    """
    methods = controller_service(controller) if cbor is None else cbor
    return {
        SANDBOX_SERVICE: sandbox_service(controller, methods),
        RUNTIME_SERVICE: runtime_pb_service(cgroups, limits),
        CONTROLLER_SERVICE: controller_pb_service(controller, methods),
    }
