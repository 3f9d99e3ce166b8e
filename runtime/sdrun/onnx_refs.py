"""The external-data references of an ONNX file, read from its protobuf without the onnx package.

A tensor stored outside the graph names a `location` that onnxruntime opens relative to the graph's
folder, and some onnxruntime versions (1.23) follow `..`, absolute paths and symlinks there, and read a
location of the form `*/_ORT_MEM_ADDR_/*` as a memory address. sdrun checks every such location before a
session is created (sdrun.folder), so it needs them all: initializers, sparse initializers, Constant-node
and other attribute tensors, those of subgraphs (If branches), of model-local functions and of their
attributes' default values, and of training-info graphs. A location must be a plain relative file name
(letters, digits, `._+-`, `/`): whatever onnxruntime might read in a special way is refused.

The walk also refuses what would make a session's time unbounded: a node that runs a subgraph other than
an If (Loop, Scan, a contrib beam search), whose number of iterations is data that sdrun cannot bound,
and a file of more protobuf fields than any Stable Diffusion graph has (padding that would make this very
walk take minutes).

Only the protobuf wire format is parsed (varints and length-delimited fields, github.com/onnx/onnx
onnx.proto field numbers); every other field, the weights included, is skipped by its length, so a
multi-gigabyte graph is walked without being read.
"""

import mmap
import re
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
    _FUNCTION: {7: _NODE, 11: _ATTRIBUTE},  # node, attribute_proto (attributes' default values)
    _NODE: {5: _ATTRIBUTE},
    _ATTRIBUTE: {5: _TENSOR, 6: _GRAPH, 10: _TENSOR, 11: _GRAPH, 22: _SPARSE, 23: _SPARSE},
    _SPARSE: {1: _TENSOR, 2: _TENSOR},  # values, indices
}
_TENSOR_NAME, _TENSOR_EXTERNAL_DATA, _TENSOR_DATA_LOCATION = 8, 13, 14
_NODE_OP_TYPE, _NODE_ATTRIBUTE, _NODE_DOMAIN = 4, 5, 7
_ATTRIBUTE_GRAPHS = (6, 11)  # g, graphs
# The one control-flow op whose subgraph runs at most once per run.
_BOUNDED_SUBGRAPH_OPS = {("", "If"), ("ai.onnx", "If")}
_EXTERNAL = 1  # TensorProto.DataLocation.EXTERNAL
# Nested subgraphs (If, Loop, Scan bodies) are a few levels deep in real models.
_MAX_DEPTH = 64
_VARINT, _FIXED64, _LENGTH, _FIXED32 = 0, 1, 2, 5
# The tiny model's UNet graph walks 12,390 fields for its 529 nodes (about 24 a node, 1.4 million a second
# here): an SD 1.5 UNet of under 20,000 nodes stays under 500,000. Eight times that takes about 3 s; a graph
# padded with 40 million empty fields would take half a minute.
MAX_FIELDS = 4_000_000
# Relative file names: no scheme, wildcard, drive or quoting that onnxruntime could read otherwise.
_PLAIN_LOCATION = re.compile(r"[A-Za-z0-9_.+\-]+(/[A-Za-z0-9_.+\-]+)*")


@dataclass(frozen=True)
class ExternalData:
    """One tensor whose bytes live in another file: `length` None means to the end of that file."""

    tensor: str
    location: str
    offset: int
    length: int | None


class _MalformedError(ValueError):
    pass


class _UnboundedError(ValueError):
    pass


def external_data_references(path: Path) -> list[ExternalData]:
    """Every external-data reference in the ONNX file at `path`; a ModelFolderError if it is not an ONNX
    graph, names a location that is not a plain relative file name, or has nodes of unbounded work."""
    try:
        with path.open("rb") as file:
            if path.stat().st_size == 0:
                raise _MalformedError("it is empty")
            with mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as data:
                walk = _Walk(data)
                walk.message(0, len(data), _MODEL, 0)
                return walk.found
    except OSError as error:
        raise ModelFolderError(f"cannot read {path}: {error.strerror or error}") from error
    except _MalformedError as error:
        raise ModelFolderError(
            f"{path} is not an ONNX graph ({error}); export the model folder again"
        ) from error
    except _UnboundedError as error:
        raise ModelFolderError(f"{path} {error}; sdrun does not run it: export the model again") from error


class _Walk:
    """One pass over a mapped file. A message is a byte range [start, end): nothing is copied but names,
    op types and locations."""

    def __init__(self, data: mmap.mmap) -> None:
        self.data = data
        self.found: list[ExternalData] = []
        self.fields_left = MAX_FIELDS

    def message(self, start: int, end: int, kind: int, depth: int) -> None:
        if depth > _MAX_DEPTH:
            raise _MalformedError(f"its messages nest deeper than {_MAX_DEPTH} levels")
        if kind == _TENSOR:
            self.tensor(start, end)
            return
        if kind == _NODE:
            self.node(start, end, depth)
            return
        children = _CHILDREN[kind]
        for field, _, inner in self.fields(start, end):
            child = children.get(field)
            if child is not None and inner is not None:
                self.message(*inner, child, depth + 1)

    def node(self, start: int, end: int, depth: int) -> None:
        op_type = domain = ""
        runs_subgraph = False
        for field, _, inner in self.fields(start, end):
            if inner is None:
                continue
            if field == _NODE_OP_TYPE:
                op_type = self.text(inner)
            elif field == _NODE_DOMAIN:
                domain = self.text(inner)
            elif field == _NODE_ATTRIBUTE:
                runs_subgraph |= any(part in _ATTRIBUTE_GRAPHS for part, _, _ in self.fields(*inner))
                self.message(*inner, _ATTRIBUTE, depth + 1)
        if runs_subgraph and (domain, op_type) not in _BOUNDED_SUBGRAPH_OPS:
            raise _UnboundedError(
                f"has a {(domain + '.' if domain else '') + op_type[:40]} node, which runs a subgraph a "
                "number of times sdrun cannot bound (Stable Diffusion graphs have no loops)"
            )

    def tensor(self, start: int, end: int) -> None:
        name, location, entries = "", 0, {}
        for field, value, inner in self.fields(start, end):
            if field == _TENSOR_NAME and inner is not None:
                name = self.text(inner)
            elif field == _TENSOR_DATA_LOCATION and inner is None:
                location = value
            elif field == _TENSOR_EXTERNAL_DATA and inner is not None:
                pair = {key: self.text(part) for key, _, part in self.fields(*inner) if part is not None}
                entries[pair.get(1, "")] = pair.get(2, "")
        if location != _EXTERNAL and "location" not in entries:
            return
        if not entries.get("location"):
            raise _MalformedError(f"tensor {name[:80]!r} is stored outside the graph but names no location")
        if not _PLAIN_LOCATION.fullmatch(entries["location"]) or "_ORT_" in entries["location"].upper():
            raise _UnboundedError(
                f"stores tensor {name[:80]!r} at {entries['location'][:80]!r}, which is not a plain relative "
                "file name (onnxruntime reads some such locations as memory addresses)"
            )
        self.found.append(
            ExternalData(
                tensor=name,
                location=entries["location"],
                offset=_whole(entries.get("offset", "0"), name),
                length=_whole(entries["length"], name) if "length" in entries else None,
            )
        )

    def text(self, span: tuple[int, int]) -> str:
        try:
            return self.data[span[0] : span[1]].decode("utf-8")
        except UnicodeDecodeError as error:
            raise _MalformedError("a name is not UTF-8 text") from error

    def fields(self, start: int, end: int) -> Iterator[tuple[int, int, tuple[int, int] | None]]:
        """(field number, varint value, byte range of a length-delimited payload or None) per field."""
        data, position = self.data, start
        while position < end:
            self.fields_left -= 1
            if self.fields_left < 0:
                raise _UnboundedError(
                    f"has more than {MAX_FIELDS:,} protobuf fields, far more than any Stable Diffusion graph"
                )
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


def _whole(text: str, tensor: str) -> int:
    if not (text.isascii() and text.isdigit()) or len(text) > 20:
        raise _MalformedError(f"tensor {tensor!r} has an external-data offset or length of {text[:40]!r}")
    return int(text)


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
