"""The external-data references of an ONNX file, read from its protobuf without the onnx package.

A tensor stored outside the graph names a `location` that onnxruntime opens relative to the graph's
folder, and some onnxruntime versions follow `..`, absolute paths and symlinks there. sdrun checks every
such location before a session is created (sdrun.folder), so it needs them all: initializers, sparse
initializers, Constant-node and other attribute tensors, and those of subgraphs and functions.

Only the protobuf wire format is parsed (varints and length-delimited fields, github.com/onnx/onnx
onnx.proto field numbers); every other field, the weights included, is skipped by its length, so a
multi-gigabyte graph is walked without being read.
"""

import mmap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from sdrun.errors import ModelFolderError

# Which length-delimited fields of each message hold messages that can reach a TensorProto.
_MODEL, _TRAINING, _GRAPH, _FUNCTION, _NODE, _ATTRIBUTE, _SPARSE, _TENSOR = range(8)
_CHILDREN = {
    _MODEL: {7: _GRAPH, 20: _TRAINING, 25: _FUNCTION},  # graph, training_info, functions
    _TRAINING: {1: _GRAPH, 2: _GRAPH},  # initialization, algorithm
    _GRAPH: {1: _NODE, 5: _TENSOR, 15: _SPARSE},  # node, initializer, sparse_initializer
    _FUNCTION: {7: _NODE},
    _NODE: {5: _ATTRIBUTE},
    _ATTRIBUTE: {5: _TENSOR, 6: _GRAPH, 10: _TENSOR, 11: _GRAPH, 22: _SPARSE, 23: _SPARSE},
    _SPARSE: {1: _TENSOR, 2: _TENSOR},  # values, indices
}
_TENSOR_NAME, _TENSOR_EXTERNAL_DATA, _TENSOR_DATA_LOCATION = 8, 13, 14
_EXTERNAL = 1  # TensorProto.DataLocation.EXTERNAL
# Nested subgraphs (If, Loop, Scan bodies) are a few levels deep in real models.
_MAX_DEPTH = 64
_VARINT, _FIXED64, _LENGTH, _FIXED32 = 0, 1, 2, 5


@dataclass(frozen=True)
class ExternalData:
    """One tensor whose bytes live in another file: `length` None means to the end of that file."""

    tensor: str
    location: str
    offset: int
    length: int | None


class _MalformedError(ValueError):
    pass


def external_data_references(path: Path) -> list[ExternalData]:
    """Every external-data reference in the ONNX file at `path` (a ModelFolderError if it is not one)."""
    try:
        with path.open("rb") as file:
            if path.stat().st_size == 0:
                raise _MalformedError("it is empty")
            with mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as data:
                found: list[ExternalData] = []
                _walk(data, 0, len(data), _MODEL, 0, found)
                return found
    except OSError as error:
        raise ModelFolderError(f"cannot read {path}: {error.strerror or error}") from error
    except _MalformedError as error:
        raise ModelFolderError(
            f"{path} is not an ONNX graph ({error}); export the model folder again"
        ) from error


# A message is the byte range [start, end) of the mapped file: nothing is copied but names and locations.
def _walk(data: mmap.mmap, start: int, end: int, kind: int, depth: int, found: list[ExternalData]) -> None:
    if depth > _MAX_DEPTH:
        raise _MalformedError(f"its messages nest deeper than {_MAX_DEPTH} levels")
    if kind == _TENSOR:
        _read_tensor(data, start, end, found)
        return
    children = _CHILDREN[kind]
    for field, _, inner in _fields(data, start, end):
        child = children.get(field)
        if child is not None and inner is not None:
            _walk(data, *inner, child, depth + 1, found)


def _read_tensor(data: mmap.mmap, start: int, end: int, found: list[ExternalData]) -> None:
    name, location, entries = "", 0, {}
    for field, value, inner in _fields(data, start, end):
        if field == _TENSOR_NAME and inner is not None:
            name = _text(data, inner)
        elif field == _TENSOR_DATA_LOCATION and inner is None:
            location = value
        elif field == _TENSOR_EXTERNAL_DATA and inner is not None:
            pair = {key: _text(data, part) for key, _, part in _fields(data, *inner) if part is not None}
            entries[pair.get(1, "")] = pair.get(2, "")
    if location != _EXTERNAL and "location" not in entries:
        return
    if not entries.get("location"):
        raise _MalformedError(f"tensor {name!r} is stored outside the graph but names no location")
    found.append(
        ExternalData(
            tensor=name,
            location=entries["location"],
            offset=_whole(entries.get("offset", "0"), name),
            length=_whole(entries["length"], name) if "length" in entries else None,
        )
    )


def _whole(text: str, tensor: str) -> int:
    if not (text.isascii() and text.isdigit()) or len(text) > 20:
        raise _MalformedError(f"tensor {tensor!r} has an external-data offset or length of {text[:40]!r}")
    return int(text)


def _text(data: mmap.mmap, span: tuple[int, int]) -> str:
    try:
        return data[span[0] : span[1]].decode("utf-8")
    except UnicodeDecodeError as error:
        raise _MalformedError("a name is not UTF-8 text") from error


def _fields(data: mmap.mmap, start: int, end: int) -> Iterator[tuple[int, int, tuple[int, int] | None]]:
    """(field number, varint value, byte range of a length-delimited payload or None) per field."""
    position = start
    while position < end:
        key, position = _varint(data, position, end)
        field, wire = key >> 3, key & 7
        if wire == _VARINT:
            value, position = _varint(data, position, end)
            yield field, value, None
        elif wire == _LENGTH:
            size, position = _varint(data, position, end)
            if position + size > end:
                raise _MalformedError("a field runs past the end of its message")
            yield field, 0, (position, position + size)
            position += size
        elif wire in (_FIXED64, _FIXED32):
            position += 8 if wire == _FIXED64 else 4
        else:
            raise _MalformedError(f"wire type {wire} is not protobuf's")
    if position != end:
        raise _MalformedError("a field runs past the end of its message")


def _varint(data: mmap.mmap, position: int, end: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if position >= end or shift > 63:
            raise _MalformedError("a number is cut off")
        byte = data[position]
        position += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, position
