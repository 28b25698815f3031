"""Protobuf messages <-> the services' messages, in one place.

A protobuf request is read into the shape of its CBOR message (a map keyed by field name, see
docs/services.md) and checked by the same functions as a CBOR one (``_convert``), so both
envelopes take and refuse the same values, with the same INVALID_ARGUMENT naming the field.
Going out, a CBOR-shaped answer is written into its protobuf message field by field.  The
rules that make one shape the other's:

- A field's name is its CBOR key.  A field with presence (``optional``, a message, a oneof
  member) is in the map only when set; a plain scalar always is, at its value (so an empty
  ``sandbox_id`` is refused as empty, as in CBOR); a repeated field or a map only when not
  empty.
- ``google.protobuf.Timestamp`` is a timestamp (an aware datetime going in).
- A ``*_json`` text field (``sim_json``, ``seccomp_json``) is JSON for the CBOR field
  named without the suffix (``sim``, ``seccomp``), which it must not be given besides.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Final

from cbor2 import CBORTag
from google.protobuf.message import DecodeError
from google.protobuf.timestamp_pb2 import Timestamp

from .._errors import InvalidArgument
from ..wire import loads_message

#: The type URL of a protobuf message in a ``google.protobuf.Any``.
TYPE_URL_PREFIX: Final = "type.googleapis.com/"
_JSON_SUFFIX: Final = "_json"


def parse(cls: Any, payload: bytes, where: str) -> Any:
    """The message of type ``cls`` in ``payload``; INVALID_ARGUMENT when it is not one."""
    try:
        return cls.FromString(payload)
    except DecodeError:
        name = cls.DESCRIPTOR.full_name
        raise InvalidArgument(f"{where}: the payload is not a valid {name} message") from None


def fields(message: Any, where: str) -> dict[str, Any]:
    """``message``'s fields as its CBOR message holds them (see the module's rules)."""
    out: dict[str, Any] = {}
    for field in message.DESCRIPTOR.fields:
        name = field.name
        value = getattr(message, name)
        if field.is_repeated:
            if not value:
                continue
            if field.message_type is not None and field.message_type.GetOptions().map_entry:
                out[name] = dict(value)
            elif field.message_type is not None:
                out[name] = [fields(item, f"{where}.{name}[{i}]") for i, item in enumerate(value)]
            else:
                out[name] = list(value)
        elif field.has_presence:
            if not message.HasField(name):
                continue
            if field.message_type is None:
                out[name] = value
            elif field.message_type.full_name == Timestamp.DESCRIPTOR.full_name:
                try:
                    out[name] = value.ToDatetime(tzinfo=UTC)
                except (ValueError, OverflowError):
                    raise InvalidArgument(f"{where}.{name}: not a valid timestamp") from None
            else:
                out[name] = fields(value, f"{where}.{name}")
        else:
            out[name] = value
    for name in [name for name in out if name.endswith(_JSON_SUFFIX)]:
        target = name.removesuffix(_JSON_SUFFIX)
        if target in out:
            raise InvalidArgument(f"{where}: give at most one of {target!r} and {name!r}")
        try:
            out[target] = json.loads(out.pop(name))
        except ValueError:
            raise InvalidArgument(f"{where}.{name}: not valid JSON") from None
    return out


def request(cls: Any, payload: bytes, where: str) -> dict[str, Any]:
    """The CBOR-shaped message of a protobuf request of type ``cls``."""
    return fields(parse(cls, payload, where), where)


def timestamp(value: CBORTag | datetime) -> Any:
    """A timestamp of a CBOR-shaped message (tag 1, or a datetime) as a protobuf Timestamp."""
    stamp = Timestamp()
    if isinstance(value, datetime):
        stamp.FromDatetime(value)
    else:
        stamp.FromNanoseconds(round(value.value * 1e9))
    return stamp


def fill(message: Any, values: Mapping[str, Any] | bytes) -> Any:
    """``message`` with the fields of a CBOR-shaped answer (a map, or its CBOR encoding) set;
    keys the message has no field for are left out (the status's ``extra``)."""
    if isinstance(values, bytes):
        values = loads_message(values)
    by_name = message.DESCRIPTOR.fields_by_name
    for name, value in values.items():
        field = by_name.get(name)
        if field is None or value is None:
            continue
        if isinstance(value, CBORTag | datetime):
            getattr(message, name).CopyFrom(timestamp(value))
        elif isinstance(value, Mapping):
            target = getattr(message, name)
            if field.is_repeated:
                target.update(value)
            else:
                fill(target, value)
        elif isinstance(value, list):
            target = getattr(message, name)
            for item in value:
                if isinstance(item, Mapping):
                    fill(target.add(), item)
                else:
                    target.append(item)
        else:
            setattr(message, name, value)
    return message


def encode(cls: Any, values: Mapping[str, Any] | bytes) -> bytes:
    """A CBOR-shaped answer as the encoded protobuf message of type ``cls``."""
    data: bytes = fill(cls(), values).SerializeToString()
    return data


def any_type(type_url: str) -> str:
    """The full name of the message in an Any of ``type_url`` (what follows its last /)."""
    return type_url.rpartition("/")[2]
