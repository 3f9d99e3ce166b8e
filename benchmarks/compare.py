"""Run every system side by side, each in a fresh process, and summarise: tables, ratios and a plot.

    python benchmarks/compare.py [--work build/bench] [--sizes 256 512] [--full-sizes 256]
                                 [--full-systems NAME ...] [--only NAME ...] [--plot PNG]

Each (system, size) runs `benchmarks/systems.py` in its own child process, so its peak resident memory
(the larger of the child's own ru_maxrss and the stage peaks it reports) is its alone. Results go to
<work>/results/<system>-<size>.json; the summary (markdown) is printed and written to <work>/summary.md.
"""

import argparse
import json
import sys
from pathlib import Path

from child import run_child
from plot import bar_panel, grid

HERE = Path(__file__).parent
# name -> arguments of systems.py; the reference for ratios is diffusers. The sdrun folders are the
# `sdexport build`s that prepare.py makes.
SYSTEMS: dict[str, list[str]] = {
    "sdrun fp32": ["sdrun", "--folder", "sdrun-fp32"],
    "sdrun fp32, fast": ["sdrun", "--folder", "sdrun-fp32", "--fast"],
    "sdrun int8": ["sdrun", "--folder", "sdrun-int8"],
    "sdrun int8-compact": ["sdrun", "--folder", "sdrun-int8-compact"],
    "sdrun int8-compact, low-memory": ["sdrun", "--folder", "sdrun-int8-compact", "--low-memory"],
    "torch (ours, eager)": ["torch"],
    "diffusers (PyTorch)": ["diffusers"],
    "optimum (onnxruntime)": ["optimum"],
}
REFERENCE = "diffusers (PyTorch)"
UNET = "UNet step, guidance (batch 2)"
STAGES = ("create sessions", "text encoding (batch 2)", UNET, "VAE decode (1 image)")


def _slug(name: str) -> str:
    """A system's name as a file name: "sdrun on optimum's export" -> "sdrun_on_optimums_export"."""
    return "".join(char for char in name.replace(" ", "_") if char.isalnum() or char in "_-")


def _stage(result: dict, name: str) -> float | None:
    found = [stage for stage in result["stages"] if stage["name"] == name]
    return min(found[0]["seconds"]) if found else None


def _generation(result: dict, steps: int) -> tuple[float | None, bool]:
    """A whole generation's seconds (without session creation): measured, or estimated from the parts."""
    measured = _stage(result, f"generation, {steps} steps")
    if measured is not None:
        return measured, True
    parts = [_stage(result, name) for name in ("text encoding (batch 2)", UNET, "VAE decode (1 image)")]
    if None in parts:
        return None, False
    sampler = _stage(result, "sampler per step") or 0.0
    text, unet, vae = parts
    return text + steps * (unet + sampler) + vae, False


def run_all(args: argparse.Namespace) -> dict[tuple[str, int], dict]:
    results = {}
    out = args.work / "results"
    out.mkdir(parents=True, exist_ok=True)
    for size in args.sizes:
        for name, system_args in SYSTEMS.items():
            if args.only and name not in args.only:
                continue
            path = out / f"{_slug(name)}-{size}.json"
            whole = size in args.full_sizes and (not args.full_systems or name in args.full_systems)
            full = ["--full"] if whole else []
            command = [sys.executable, str(HERE / "systems.py"), *system_args, "--work", str(args.work)]
            command += [
                "--size",
                str(size),
                "--steps",
                str(args.steps),
                "--repeats",
                str(args.repeats),
                *full,
            ]
            run = run_child([*command, "--out", str(path)])
            if run.returncode != 0:
                print(f"{name} at {size}: failed ({run.returncode})\n{run.output[-3000:]}", flush=True)
                continue
            result = json.loads(path.read_text())
            result["child_peak_mb"] = max(run.peak_mb, result["process_peak_mb"])
            result["child_seconds"] = run.seconds
            path.write_text(json.dumps(result, indent=2) + "\n")
            results[(name, size)] = result
            print(f"{name} at {size}: {run.seconds} s, peak {result['child_peak_mb']:.0f} MiB", flush=True)
    return results


def load_all(work: Path) -> dict[tuple[str, int], dict]:
    results = {}
    names = {_slug(name): name for name in SYSTEMS}
    for path in sorted((work / "results").glob("*.json")):
        stem, size = path.stem.rsplit("-", 1)
        if stem in names:
            results[(names[stem], int(size))] = json.loads(path.read_text())
    return results


def summary(results: dict[tuple[str, int], dict], sizes: list[int], steps: int) -> str:
    lines = []
    for size in sizes:
        rows = [(name, results[(name, size)]) for name in SYSTEMS if (name, size) in results]
        if not rows:
            continue
        reference = results.get((REFERENCE, size))
        lines += [
            f"### {size}x{size}",
            "",
            "| system | sessions (s) | text (s) | UNet step (s) | x diffusers | VAE decode (s) "
            f"| sampler/step (ms) | {steps}-step generation (s) | peak (MiB) | peak / diffusers |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for name, result in rows:
            values = [_stage(result, stage) for stage in STAGES]
            unet = values[2]
            speedup = _stage(reference, UNET) / unet if reference and unet else None
            generation, measured = _generation(result, steps)
            sampler = _stage(result, "sampler per step")
            peak_ratio = result["child_peak_mb"] / reference["child_peak_mb"] if reference else None
            cells = [
                name,
                *(f"{value:.3g}" if value is not None else "-" for value in values[:3]),
                f"{speedup:.2f}" if speedup else "-",
                f"{values[3]:.3g}" if values[3] is not None else "-",
                f"{sampler * 1000:.3g}" if sampler is not None else "-",
                (f"{generation:.1f}" + ("" if measured else " (est.)")) if generation else "-",
                f"{result['child_peak_mb']:.0f}",
                f"{peak_ratio:.2f}" if peak_ratio else "-",
            ]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def plot(results: dict[tuple[str, int], dict], sizes: list[int], steps: int, path: Path, title: str) -> None:
    columns = []
    for size in sizes:
        names = [name for name in SYSTEMS if (name, size) in results]
        unet = [(name, _stage(results[(name, size)], UNET), "s") for name in names]
        generation = []
        for name in names:
            seconds, measured = _generation(results[(name, size)], steps)
            generation.append((name, seconds, "s" if measured else "s (est.)"))
        peak = [(name, results[(name, size)]["child_peak_mb"] / 1024, "GiB") for name in names]
        columns.append(
            [
                bar_panel(f"{size}x{size}: one UNet step with guidance", "s, lower is better", unet),
                bar_panel(f"{size}x{size}: {steps}-step generation", "s, lower is better", generation),
                bar_panel(f"{size}x{size}: peak resident memory", "GiB, lower is better", peak),
            ]
        )
    rows = [list(row) for row in zip(*columns, strict=True)]
    grid(rows, title).save(path)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--work", type=Path, default=Path("build/bench"))
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512])
    parser.add_argument("--full-sizes", type=int, nargs="*", default=[256])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--only", nargs="*", help="run only these systems (names as in the tables)")
    parser.add_argument("--full-systems", nargs="*", help="whole generations for these systems only")
    parser.add_argument("--report-only", action="store_true", help="summarise the results already there")
    parser.add_argument("--plot", type=Path, default=HERE / "comparison.png")
    parser.add_argument("--title", default="Random-weight SD 1.5, CPU, fp32 unless named")
    args = parser.parse_args()
    if not args.report_only:
        run_all(args)
    results = load_all(args.work)
    text = summary(results, args.sizes, args.steps)
    (args.work / "summary.md").write_text(text + "\n")
    print(text)
    plot(results, args.sizes, args.steps, args.plot, args.title)
    print(f"plot: {args.plot}")


if __name__ == "__main__":
    main()
