"""The folder checks hold whatever onnxruntime is installed: onnxruntime 1.23, the oldest sdrun supports
(installed beside the current one by scripts/setup.sh test), reads any file a graph's external data
names, in initializers and in the default values of a model-local function's attributes alike, and reads
the location `*/_ORT_MEM_ADDR_/*` as a memory address, so the refusal must come from sdrun's own gate
before a session opens."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from hostile_folders import copy_folder, function_default_graph, reseal, weights_graph

OLD_ONNXRUNTIME = Path(__file__).resolve().parents[2] / ".venv" / "onnxruntime-1.23"
RUNTIME = Path(__file__).resolve().parents[2] / "runtime"
SECRET = np.arange(16, dtype=np.float32) + 1000.0

pytestmark = pytest.mark.skipif(
    not (OLD_ONNXRUNTIME / "onnxruntime").is_dir(),
    reason=f"onnxruntime 1.23 is not installed at {OLD_ONNXRUNTIME} (bash scripts/setup.sh test installs it)",
)


def _with_old_onnxruntime(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(OLD_ONNXRUNTIME), str(RUNTIME)]))
    return subprocess.run(
        [sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


# Where a crafted graph names its outside file: an initializer, a function attribute's default value.
CRAFTED_GRAPHS = {"initializer": weights_graph, "function attribute default": function_default_graph}


@pytest.mark.parametrize("place", CRAFTED_GRAPHS)
def test_old_onnxruntime_reads_outside_files(place: str, tmp_path: Path) -> None:
    """The control: with no check in front of it, onnxruntime 1.23 loads a secret from outside the graph's
    folder into the output."""
    (tmp_path / "secret.bin").write_bytes(SECRET.tobytes())
    (tmp_path / "model").mkdir()
    onnx.save_model(CRAFTED_GRAPHS[place]("../secret.bin", SECRET), tmp_path / "model" / "model.onnx")
    script = (
        "import numpy as np, onnxruntime as ort\n"
        "print(ort.__version__)\n"
        "s = ort.InferenceSession('model/model.onnx', providers=['CPUExecutionProvider'])\n"
        "print(s.run(None, {'x': np.zeros(16, np.float32)})[0].tolist())\n"
    )
    done = _with_old_onnxruntime("-c", script, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    version, values = done.stdout.splitlines()
    assert version == "1.23.2" and values == str(SECRET.tolist())


def test_sdrun_on_old_onnxruntime_refuses_the_folder_and_runs_a_good_one(
    tiny_sdexport_dir: Path, tmp_path: Path
) -> None:
    (tmp_path / "secret.bin").write_bytes(SECRET.tobytes())
    good = _with_old_onnxruntime(
        "-m",
        "sdrun",
        "a cube",
        "--model",
        str(tiny_sdexport_dir),
        "--out",
        "good.png",
        "--steps",
        "2",
        cwd=tmp_path,
    )
    assert good.returncode == 0 and (tmp_path / "good.png").is_file(), good.stderr

    for index, (graph, location, message) in enumerate(
        [
            (weights_graph, "../../secret.bin", "leads out of the folder"),
            (function_default_graph, "../../secret.bin", "leads out of the folder"),
            (weights_graph, "*/_ORT_MEM_ADDR_/*", "not a plain relative file name"),
        ]
    ):
        folder = copy_folder(tiny_sdexport_dir, tmp_path / f"model-{index}")
        onnx.save_model(graph(location, SECRET), folder / "vae_decoder" / "model.onnx")
        # A real file where onnxruntime 1.23 would read a memory address instead.
        memory = folder / "vae_decoder" / "*" / "_ORT_MEM_ADDR_" / "*"
        memory.parent.mkdir(parents=True)
        memory.write_bytes(SECRET.tobytes())
        reseal(folder)
        bad = _with_old_onnxruntime(
            "-m", "sdrun", "a cube", "--model", str(folder), "--out", "bad.png", "--steps", "2", cwd=tmp_path
        )
        assert bad.returncode == 1 and message in bad.stderr, bad.stderr
        assert "Traceback" not in bad.stderr and not (tmp_path / "bad.png").exists()
