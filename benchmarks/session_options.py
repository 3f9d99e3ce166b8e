"""One graph under different onnxruntime session options: creation time, resident memory, step time.

    python benchmarks/session_options.py GRAPH [--size 512] [--repeats 2] [--out result.json]
                                         [--provider cuda]

Each option set runs in a fresh process: create the session, then run the guided UNet step (batch 2)
--repeats times after one warm-up call. Reported: creation seconds, resident memory after creation
(current and peak, split into file-backed pages, i.e. memory-mapped weights, and anonymous ones), the
best step time and the peak over the steps.

With --provider cuda the sets are the CUDA provider's: its options ("cuda." keys), and inputs and
output kept on the GPU through IO binding ("bound"), which a CUDA graph ("cuda.enable_cuda_graph")
requires; "bound" is the step without any copy between host and GPU.
"""

import argparse
import json
import sys
import time
from pathlib import Path

from child import run_child

OPTION_SETS: dict[str, dict[str, str]] = {
    "all optimizations (default)": {},
    "no NCHWc layout (extended)": {"level": "ORT_ENABLE_EXTENDED"},
    "no prepacking": {"session.disable_prepacking": "1"},
    "extended, no prepacking": {"level": "ORT_ENABLE_EXTENDED", "session.disable_prepacking": "1"},
    "arena off": {"arena": "0"},
}
CUDA_OPTION_SETS: dict[str, dict[str, str]] = {
    "CUDA provider (default)": {},
    "inputs and output on the GPU": {"bound": "1"},
    "NHWC convolutions": {"cuda.prefer_nhwc": "1"},
    "CUDA graph, on the GPU": {"bound": "1", "cuda.enable_cuda_graph": "1"},
}


def _status() -> dict[str, float]:
    fields = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
            fields[key] = int(value.split()[0]) / 1024
    return fields


def child(graph: str, options_json: str, size: int, repeats: int, provider: str) -> None:
    import numpy as np
    import onnxruntime as ort

    options = ort.SessionOptions()
    cuda_options: dict[str, str] = {}
    bound = False
    for key, value in json.loads(options_json).items():
        if key == "level":
            options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, value)
        elif key == "arena":
            options.enable_cpu_mem_arena = options.enable_mem_pattern = value == "1"
        elif key == "bound":
            bound = value == "1"
        elif key.startswith("cuda."):
            cuda_options[key.removeprefix("cuda.")] = value
        else:
            options.add_session_config_entry(key, value)
    providers: list = ["CPUExecutionProvider"]
    if provider == "cuda":
        providers = [("CUDAExecutionProvider", cuda_options), "CPUExecutionProvider"]
    started = time.perf_counter()
    session = ort.InferenceSession(graph, options, providers=providers)
    created = time.perf_counter() - started
    after_creation = _status()
    rng = np.random.default_rng(0)
    inputs = {node.name: node for node in session.get_inputs()}
    context_dim = inputs["encoder_hidden_states"].shape[2]
    feeds = {
        "sample": rng.standard_normal((2, 4, size // 8, size // 8), dtype=np.float32),
        "timestep": np.array(500.0, dtype=np.float32).reshape([1] * len(inputs["timestep"].shape)),
        "encoder_hidden_states": rng.standard_normal((2, 77, context_dim), dtype=np.float32),
    }
    binding = session.io_binding()
    if bound:
        for name, value in feeds.items():
            binding.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(value, "cuda", 0))
        output = ort.OrtValue.ortvalue_from_shape_and_type(feeds["sample"].shape, np.float32, "cuda", 0)
        binding.bind_ortvalue_output(session.get_outputs()[0].name, output)

    def run() -> None:
        if bound:
            session.run_with_iobinding(binding)
        else:
            session.run(None, feeds)

    run()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    print(
        json.dumps(
            {
                "providers": session.get_providers(),
                "create_seconds": created,
                "after_creation": after_creation,
                "step_seconds": min(times),
                "end": _status(),
            }
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("graph", type=Path)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--only", nargs="*")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--provider", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--child", metavar="OPTIONS_JSON", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(str(args.graph), args.child, args.size, args.repeats, args.provider)
        return
    results = json.loads(args.out.read_text()) if args.out and args.out.is_file() else {}
    for name, options in (CUDA_OPTION_SETS if args.provider == "cuda" else OPTION_SETS).items():
        if args.only and name not in args.only:
            continue
        command = [sys.executable, __file__, str(args.graph), "--size", str(args.size)]
        command += ["--provider", args.provider]
        run = run_child([*command, "--repeats", str(args.repeats), "--child", json.dumps(options)])
        if run.returncode != 0:
            print(f"{name}: failed\n{run.output[-2000:]}", flush=True)
            continue
        result = json.loads(run.output.strip().splitlines()[-1])
        result["peak_mb"] = run.peak_mb
        results[f"{args.graph.parent.parent.name}/{args.graph.parent.name} {args.size}: {name}"] = result
        made = result["after_creation"]
        print(
            f"{name:<30} create {result['create_seconds']:6.1f} s  after creation {made['VmRSS']:6.0f} MiB "
            f"(file {made['RssFile']:.0f}, anon {made['RssAnon']:.0f}; creation peak {made['VmHWM']:.0f})"
            f"  step {result['step_seconds']:.2f} s  peak {run.peak_mb:.0f} MiB",
            flush=True,
        )
        if args.out:
            args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
