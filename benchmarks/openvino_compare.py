"""sdrun on onnxruntime's OpenVINO provider, against its CPU provider and against OpenVINO itself.

    python benchmarks/openvino_compare.py [--work build/bench] [--size 512] [--repeats 3] [--only NAME ...]
        [--openvino-python /path/to/venv-with-openvino/bin/python] [--out build/bench/openvino.json]

Folders, from benchmarks/prepare.py's random SD 1.5 weights (`--weights-only`):
    <work>/sdrun-fp32            sdexport build sd15-random.safetensors  (fused attention)
    <work>/sdrun-fp32-openvino   sdexport build sd15-random.safetensors --target openvino
    <work>/optimum               optimum-cli export onnx of the same weights (prepare.py --only optimum),
                                 for the rows on optimum's graph (skipped when it is absent)

Each run is a fresh process, one after the other:
- `sdrun bench --no-full` (stages: session creation, text encoding, the guided UNet step at batch 2, VAE
  decode; peaks per stage) on the CPU provider with the main .venv's onnxruntime (default and --fast), and
  on the OpenVINO provider with .venv/openvino's onnxruntime-openvino, in bf16 and f32
  (SDRUN_OPENVINO_PRECISION) as sdrun runs by default (no compiled-model cache), then in bf16 with the
  cache on (SDRUN_OPENVINO_CACHE=1), first empty (a new one per invocation) and then filled by that
  run; and bf16 on the fused folder, whose attention runs
  on the CPU provider between pieces; and on optimum's folder, on both providers (sdrun runs optimum's
  exports), to tell the graph's share from the engine's;
- OpenVINO itself (the `openvino` package in --openvino-python's environment) on the same UNet graph as
  the OpenVINO provider: read the ONNX file, compile for the CPU with the same precision hint, run the
  same guided step (batch 2);
- the peers, through benchmarks/systems.py on the same weights and stages: optimum's
  ORTStableDiffusionPipeline on its folder, and diffusers' StableDiffusionPipeline (PyTorch, float32) on
  <work>/diffusers (each skipped when its folder is absent).
The child's own peak resident memory comes from wait4 (benchmarks/child.py).
"""

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from child import run_child

ROOT = Path(__file__).resolve().parent.parent
MAIN_SDRUN = ROOT / ".venv" / "bin" / "sdrun"
MAIN_PYTHON = ROOT / ".venv" / "bin" / "python"
SYSTEMS = Path(__file__).resolve().parent / "systems.py"
OPENVINO_SDRUN = ROOT / ".venv" / "openvino" / "bin" / "sdrun"
UNET_TIMESTEP = 500.0  # as sdrun bench's UNet step


def _sdrun_runs(work: Path, cache: Path) -> dict[str, tuple[list[str], dict[str, str]]]:
    """name -> (command without --json, extra environment)."""
    fused, plain = str(work / "sdrun-fp32"), str(work / "sdrun-fp32-openvino")
    runs = {
        "sdrun, CPU provider (default)": ([str(MAIN_SDRUN), "bench", fused], {}),
        "sdrun, CPU provider, --fast": ([str(MAIN_SDRUN), "bench", fused, "--fast"], {}),
    }
    command = [str(OPENVINO_SDRUN), "bench", plain, "--provider", "openvino"]
    for precision in ("bf16", "f32"):
        runs[f"sdrun, OpenVINO provider, {precision}"] = (command, {"SDRUN_OPENVINO_PRECISION": precision})
    # With the compiled-model cache on: empty when this invocation starts, then filled by that run.
    cached = {"XDG_CACHE_HOME": str(cache), "SDRUN_OPENVINO_PRECISION": "bf16", "SDRUN_OPENVINO_CACHE": "1"}
    runs["sdrun, OpenVINO provider, bf16, cache on, empty"] = (command, cached)
    runs["sdrun, OpenVINO provider, bf16, cache on, filled"] = (command, cached)
    runs["sdrun, OpenVINO provider, bf16, fused-attention folder"] = (
        [str(OPENVINO_SDRUN), "bench", fused, "--provider", "openvino"],
        {"SDRUN_OPENVINO_PRECISION": "bf16"},
    )
    optimum = work / "optimum"
    if optimum.is_dir():
        runs["sdrun on optimum's folder, CPU provider"] = ([str(MAIN_SDRUN), "bench", str(optimum)], {})
        runs["sdrun on optimum's folder, OpenVINO provider, bf16"] = (
            [str(OPENVINO_SDRUN), "bench", str(optimum), "--provider", "openvino"],
            {"SDRUN_OPENVINO_PRECISION": "bf16"},
        )
    return runs


def _reported(command: list[str], report_flag: str, env: dict[str, str] | None = None) -> dict:
    """Run `command` with `report_flag PATH` added; the JSON report it writes there, with the child's peak."""
    with tempfile.TemporaryDirectory() as scratch:
        report = Path(scratch) / "report.json"
        run = run_child([*command, report_flag, str(report)], env=env)
        if run.returncode != 0:
            return {"failed": run.output[-2000:]}
        result = json.loads(report.read_text())
    result["peak_mb"] = run.peak_mb
    return result


def run_sdrun(command: list[str], env: dict[str, str], size: int, repeats: int) -> dict:
    flags = ["--size", str(size), "--repeats", str(repeats), "--no-full"]
    return _reported([*command, *flags], "--json", {**os.environ, **env})


def run_system(system: str, work: Path, size: int, repeats: int) -> dict:
    """A peer measured by benchmarks/systems.py in its own process (the same stages as `sdrun bench`)."""
    command = [str(MAIN_PYTHON), str(SYSTEMS), system, "--work", str(work), "--size", str(size)]
    return _reported([*command, "--repeats", str(repeats)], "--out")


def openvino_child(graph: str, precision: str, size: int, repeats: int) -> None:
    """OpenVINO alone on `graph`: compile for the CPU, then the guided UNet step at batch 2."""
    import openvino as ov

    core = ov.Core()
    started = time.perf_counter()
    compiled = core.compile_model(core.read_model(graph), "CPU", {"INFERENCE_PRECISION_HINT": precision})
    created = time.perf_counter() - started
    inputs = {node.get_any_name(): node for node in compiled.inputs}
    rng = np.random.default_rng(0)
    context_dim = inputs["encoder_hidden_states"].get_partial_shape()[2].get_length()
    feeds = {
        "sample": rng.standard_normal((2, 4, size // 8, size // 8), dtype=np.float32),
        "timestep": _timestep(inputs["timestep"]),
        "encoder_hidden_states": rng.standard_normal((2, 77, context_dim), dtype=np.float32),
    }
    request = compiled.create_infer_request()
    started = time.perf_counter()
    request.infer(feeds)
    first = time.perf_counter() - started
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        request.infer(feeds)
        times.append(time.perf_counter() - started)
    print(json.dumps({"create_seconds": created, "first_call": first, "step_seconds": times}))


def _timestep(node: object) -> np.ndarray:
    """sdrun's graphs take a float32 scalar, optimum's one int64 or float timestep per batch row."""
    dtype = np.int64 if node.get_element_type().get_type_name() == "i64" else np.float32
    shape = () if node.get_partial_shape().rank.get_length() == 0 else (2,)
    return np.full(shape, UNET_TIMESTEP, dtype=dtype)


def run_openvino(python: str, graph: Path, precision: str, size: int, repeats: int) -> dict:
    command = [python, __file__, "--child", str(graph), precision, "--size", str(size)]
    command += ["--repeats", str(repeats)]
    run = run_child(command)
    if run.returncode != 0:
        return {"failed": run.output[-2000:]}
    result = json.loads(run.output.strip().splitlines()[-1])
    result["peak_mb"] = run.peak_mb
    return result


def summary(result: dict) -> str:
    if "failed" in result:
        return "failed: " + result["failed"].strip().splitlines()[-1]
    if "stages" not in result:  # OpenVINO alone
        steps = result["step_seconds"]
        return (
            f"compile {result['create_seconds']:.1f} s, UNet step {min(steps):.2f}-"
            f"{statistics.median(steps):.2f} s, peak {result['peak_mb']:.0f} MiB"
        )
    stages = {stage["name"]: stage for stage in result["stages"]}
    step = stages["UNet step, guidance (batch 2)"]["seconds"]
    decode = stages["VAE decode (1 image)"]["seconds"]
    return (
        f"sessions {stages['create sessions']['seconds'][0]:.1f} s, UNet step {min(step):.2f}-"
        f"{statistics.median(step):.2f} s, VAE decode {min(decode):.2f} s, peak {result['peak_mb']:.0f} MiB"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--work", type=Path, default=ROOT / "build" / "bench")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--only", nargs="+", help="these runs alone (names as printed)")
    parser.add_argument("--openvino-python", help="a Python with the openvino package, for OpenVINO alone")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--child", nargs=2, metavar=("GRAPH", "PRECISION"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        openvino_child(args.child[0], args.child[1], args.size, args.repeats)
        return
    out = args.out or args.work / f"openvino-{args.size}.json"
    results = json.loads(out.read_text()) if out.is_file() else {}
    with tempfile.TemporaryDirectory(prefix="sdrun-ov-cache-") as cache:
        runs = _sdrun_runs(args.work, Path(cache))
        jobs = {name: (run_sdrun, (*job, args.size, args.repeats)) for name, job in runs.items()}
        if args.openvino_python:
            graph = args.work / "sdrun-fp32-openvino" / "unet" / "model.onnx"
            for precision in ("bf16", "f32"):
                jobs[f"OpenVINO itself, {precision}"] = (
                    run_openvino, (args.openvino_python, graph, precision, args.size, args.repeats)
                )
            optimum_graph = args.work / "optimum" / "unet" / "model.onnx"
            if optimum_graph.is_file():
                jobs["OpenVINO itself, bf16, optimum's graph"] = (
                    run_openvino, (args.openvino_python, optimum_graph, "bf16", args.size, args.repeats)
                )
        for system in ("optimum", "diffusers"):  # each reads <work>/<system>
            if (args.work / system).is_dir():
                peer = (system, args.work, args.size, args.repeats)
                jobs[f"{system} (its own pipeline)"] = (run_system, peer)
        for name, (function, job_args) in jobs.items():
            if args.only and name not in args.only:
                continue
            when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
            results[name] = {**function(*job_args), "when": when}
            print(f"{name:<55} {summary(results[name])}", flush=True)
            out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
