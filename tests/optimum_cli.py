"""optimum's own ONNX export of a diffusers folder, as a user runs it: the other side of the interop tests."""

import os
import subprocess
import sys
from pathlib import Path


def optimum_export(source: Path, out: Path) -> None:
    """`optimum-cli export onnx --task text-to-image`, offline, in a child process."""
    command = [
        sys.executable,
        "-m",
        "optimum.commands.optimum_cli",
        "export",
        "onnx",
        "--model",
        str(source),
        "--task",
        "text-to-image",
        str(out),
    ]
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        raise RuntimeError(f"optimum-cli export failed:\n{done.stderr[-4000:]}")
