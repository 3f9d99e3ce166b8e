"""Hostile files that would cost unbounded time, or read another user's file, each refused in one line
before any session runs (the runs as test_hostile_inputs.py makes them: a child process under a memory
limit)."""

import json
import os
import struct
import time
import zlib
from pathlib import Path

import onnx
import pytest
import test_hostile_inputs
from hostile_folders import loop_graph, reseal, weights_graph
from test_hostile_inputs import FAST, SECRET, assert_refused, sdrun

from sdrun.folder import MAX_FOLDER_BYTES

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# The work folder (with a secret outside the model folder) and a copy of the tiny model inside it.
work, folder = test_hostile_inputs.work, test_hostile_inputs.folder


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def test_a_manifest_of_a_huge_sparse_file_is_refused_before_hashing(folder: Path, work: Path) -> None:
    """200 GB of holes would take minutes to hash; the sizes are summed first."""
    huge = folder / "unet" / "padding.bin"
    with huge.open("wb") as file:
        file.truncate(200 * 2**30)
    manifest = folder / "sdexport_manifest.json"
    data = json.loads(manifest.read_text())
    data["files"]["unet/padding.bin"] = {"size": 200 * 2**30, "sha256": "0" * 64}
    manifest.write_text(json.dumps(data))
    run = sdrun("a cube", "--model", folder, "--out", work / "out" / "x.png", *FAST, cwd=work, timeout=60)
    assert_refused(run, f"above the {MAX_FOLDER_BYTES // 2**30} GiB that sdrun checks", work / "out")
    assert run.seconds < 30


def test_a_graph_that_loops_for_ever_is_refused(folder: Path, work: Path) -> None:
    loops = loop_graph("latent_sample", "sample", ["b", 4, "h", "w"])
    onnx.save_model(loops, folder / "vae_decoder" / "model.onnx")
    reseal(folder)
    run = sdrun("a cube", "--model", folder, "--out", work / "out" / "x.png", *FAST, cwd=work, timeout=60)
    assert_refused(run, "Loop node, which runs a subgraph a number of times sdrun cannot bound", work / "out")


@pytest.mark.parametrize("case", ["zeros", "many chunks"])
def test_from_png_on_endless_chunks_is_bounded(case: str, work: Path) -> None:
    """A PNG signature then 50 GB of zeros (holes), or then a million empty chunks of a valid type."""
    path = work / "settings.png"
    with path.open("wb") as file:
        file.write(PNG_SIGNATURE)
        if case == "zeros":
            file.truncate(50 * 2**30)
        else:
            file.write(_chunk(b"IHDR", struct.pack(">IIBBBBB", 64, 64, 8, 2, 0, 0, 0)))
            file.write(_chunk(b"abcd", b"") * 1_000_000)
    message = "damaged PNG file" if case == "zeros" else "more than 100,000 chunks"
    started = time.perf_counter()
    run = sdrun("--from-png", path, "--out", work / "out" / "x.png", *FAST, cwd=work, timeout=60)
    assert_refused(run, message, work / "out")
    assert time.perf_counter() - started < 30


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a file to another user needs root")
def test_a_hard_link_to_another_users_file_is_refused(folder: Path, work: Path) -> None:
    """The link is the outside file itself (same inode): only its owner tells it from the folder's own."""
    secret = work / "outside" / "secret.bin"
    onnx.save_model(weights_graph("weights.bin", SECRET), folder / "vae_encoder" / "model.onnx")
    os.link(secret, folder / "vae_encoder" / "weights.bin")
    os.chown(secret, 4242, 4242)
    reseal(folder)
    run = sdrun("a cube", "--model", folder, "--out", work / "out" / "x.png", *FAST, cwd=work)
    assert_refused(run, "is a hard link to a file of another user", work / "out")


def test_a_hard_link_of_the_folders_owner_is_read(folder: Path, work: Path) -> None:
    """A folder copied with hard links (cp -l, benchmarks/variants.py) runs as before."""
    graph = folder / "unet" / "model.onnx"
    copy = work / "unet-copy.onnx"
    os.link(graph, copy)
    assert graph.stat().st_nlink == 2
    run = sdrun("a cube", "--model", folder, "--out", work / "out" / "x.png", *FAST, cwd=work)
    assert run.status == 0 and (work / "out" / "x.png").is_file(), run.stderr
