"""Where a UNet step's time goes, by operator type (onnxruntime's profiler over one guided step).

python benchmarks/profile_ops.py GRAPH [--size 512] [--top 12]
"""

import argparse
import collections
import json
import tempfile
from pathlib import Path

import numpy as np
import onnxruntime as ort


def profile(graph: Path, size: int) -> dict[str, float]:
    """Seconds per operator type over one batch-2 UNet call: the second of two (the first plans memory)."""
    options = ort.SessionOptions()
    options.enable_profiling = True
    with tempfile.TemporaryDirectory() as scratch:
        options.profile_file_prefix = str(Path(scratch) / "profile")
        session = ort.InferenceSession(str(graph), options, providers=["CPUExecutionProvider"])
        inputs = {node.name: node for node in session.get_inputs()}
        rng = np.random.default_rng(0)
        context = (2, 77, inputs["encoder_hidden_states"].shape[2])
        feeds = {
            "sample": rng.standard_normal((2, 4, size // 8, size // 8), dtype=np.float32),
            "timestep": np.array(500.0, dtype=np.float32).reshape([1] * len(inputs["timestep"].shape)),
            "encoder_hidden_states": rng.standard_normal(context, dtype=np.float32),
        }
        for _ in range(2):
            session.run(None, feeds)
        events = json.loads(Path(session.end_profiling()).read_text())
    last_run = [event for event in events if event["name"] == "model_run"][-1]
    start, stop = last_run["ts"], last_run["ts"] + last_run["dur"]
    totals: collections.Counter[str] = collections.Counter()
    for event in events:
        inside = start <= event["ts"] <= stop
        if inside and event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            totals[event["args"]["op_name"]] += event["dur"] / 1e6
    return dict(totals)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("graph", type=Path)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--top", type=int, default=12)
    args = parser.parse_args()
    totals = profile(args.graph, args.size)
    whole = sum(totals.values())
    print(f"{args.graph} at {args.size}x{args.size}: {whole:.2f} s in kernels")
    for op, seconds in sorted(totals.items(), key=lambda item: -item[1])[: args.top]:
        print(f"  {op:<28} {seconds:7.3f} s  {100 * seconds / whole:5.1f} %")


if __name__ == "__main__":
    main()
