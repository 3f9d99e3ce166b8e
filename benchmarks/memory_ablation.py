"""Peak memory and time of short generations under memory policies that differ in one tool each.

    python benchmarks/memory_ablation.py [--work build/bench] [--size 512] [--steps 2]
                                         [--runs NAME ...] [--out <work>/ablation.json]

Each run is a fresh process that loads a model folder with one MemoryPolicy and generates one image of
--steps steps (the peak of a generation is reached by its first step and its decode; more steps add
time, not memory). Reported: the child's peak resident memory, load time, mean step time, and the time
of the rest (text encoding and VAE decoding, with session creation under the low-memory policy).
"""

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

from child import run_child

from sdrun.memory import DEFAULT_POLICY, LOW_MEMORY_POLICY, MemoryPolicy

LOW = LOW_MEMORY_POLICY
# name -> (model folder under --work, policy)
RUNS: dict[str, tuple[str, MemoryPolicy]] = {
    "fp32, default": ("sdrun-fp32", DEFAULT_POLICY),
    "fp32, arena on": ("sdrun-fp32", dataclasses.replace(DEFAULT_POLICY, memory_arena=True)),
    "fp32, low-memory": ("sdrun-fp32", LOW),
    "int8, default": ("sdrun-int8", DEFAULT_POLICY),
    "int8, low-memory": ("sdrun-int8", LOW),
    "int8-compact, default": ("sdrun-int8-compact", DEFAULT_POLICY),
    "int8-compact, low-memory": ("sdrun-int8-compact", LOW),
    "  same, convolutions not sliced": ("sdrun-int8-compact-whole", LOW),
    "  same, glibc's adaptive mmap threshold": (
        "sdrun-int8-compact",
        dataclasses.replace(LOW, mmap_threshold=None),
    ),
    "  same, no heap trim after a release": ("sdrun-int8-compact", dataclasses.replace(LOW, trim_heap=False)),
    "  same, weights in one file (no mmap)": ("sdrun-int8-compact-onefile", LOW),
    "  same, sessions kept open": ("sdrun-int8-compact", dataclasses.replace(LOW, keep_sessions=True)),
    "  same, guidance batched": ("sdrun-int8-compact", dataclasses.replace(LOW, sequential_guidance=False)),
    "  same, memory arena on": ("sdrun-int8-compact", dataclasses.replace(LOW, memory_arena=True)),
    "  same, VAE not tiled": ("sdrun-int8-compact", dataclasses.replace(LOW, tiled_vae=False)),
    "  same, extended optimizations": (
        "sdrun-int8-compact",
        dataclasses.replace(LOW, optimization_level="extended"),
    ),
    "  same, default node order": ("sdrun-int8-compact", dataclasses.replace(LOW, priority_order=False)),
}


def child(folder: str, policy: str, size: int, steps: int) -> None:
    """In the child: one generation, then its timings as JSON on the last line of stdout."""
    from sdrun.bench import bench_generation, resident_mb
    from sdrun.pipeline import Pipeline

    started = time.perf_counter()
    pipeline = Pipeline.load(folder, "cpu", verify_checksums=False, memory=MemoryPolicy(**json.loads(policy)))
    loaded = time.perf_counter()
    marks: list[float] = []
    bench_generation(pipeline, size, steps, lambda step, total, latents: marks.append(time.perf_counter()))
    done = time.perf_counter()
    # The first step's time includes the UNet session's creation under the low-memory policy.
    step_times = [b - a for a, b in zip(marks, marks[1:], strict=False)]
    result = {
        "load_seconds": loaded - started,
        "first_step_end_seconds": marks[0] - loaded,
        "step_seconds": sum(step_times) / len(step_times) if step_times else None,
        "generation_seconds": done - loaded,
        "after_steps_seconds": done - marks[-1],
        "peak_mb": resident_mb(),
    }
    print(json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--work", type=Path, default=Path("build/bench"))
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--runs", nargs="*", help="names of RUNS to do (default all)")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--child", nargs=2, metavar=("FOLDER", "POLICY_JSON"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], args.child[1], args.size, args.steps)
        return
    out = args.out or args.work / f"ablation-{args.size}.json"
    results = json.loads(out.read_text()) if out.is_file() else {}
    for name, (folder, policy) in RUNS.items():
        if args.runs and name.strip() not in [run.strip() for run in args.runs]:
            continue
        if not (args.work / folder).is_dir():
            print(f"{name}: no {folder} under {args.work}, skipped", flush=True)
            continue
        command = [sys.executable, __file__, "--size", str(args.size), "--steps", str(args.steps)]
        command += ["--child", str(args.work / folder), json.dumps(dataclasses.asdict(policy))]
        run = run_child(command)
        if run.returncode != 0:
            print(f"{name}: failed\n{run.output[-3000:]}", flush=True)
            continue
        result = json.loads(run.output.strip().splitlines()[-1])
        result["peak_mb"] = max(result["peak_mb"], run.peak_mb)
        result.update(folder=folder, policy=dataclasses.asdict(policy), wall_seconds=run.seconds)
        results[name] = result
        step = f"{result['step_seconds']:.2f} s/step" if result["step_seconds"] else "-"
        print(
            f"{name:<42} peak {result['peak_mb']:7.0f} MiB  {step}  load {result['load_seconds']:.1f} s  "
            f"generation {result['generation_seconds']:.1f} s",
            flush=True,
        )
        out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
