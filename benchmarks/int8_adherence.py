"""Does int8 keep the tiny model's prompt adherence? Every caption of the tiny-shapes grammar, sampled by
sdrun from model folders of one checkpoint, judged from the pixels (sdexport.tiny.shapes.judge).

    python benchmarks/int8_adherence.py FOLDER [FOLDER ...] [--seeds 1] [--steps 25] [--guidance 5]
        [--provider cpu]

Prints, per folder, the share of pictures whose shape, colour and background the judge reads as
captioned (the measure the training run reports), and the time sdrun took.
"""

import argparse
import time
from pathlib import Path

import numpy as np

from sdexport.tiny.shapes import all_scenes, judge
from sdrun.pipeline import Pipeline


def adherence(folder: Path, seeds: int, steps: int, guidance: float, provider: str) -> tuple[float, float]:
    pipeline = Pipeline.load(folder, provider)
    scenes = all_scenes()
    right = 0
    started = time.perf_counter()
    for seed in range(seeds):
        for index, scene in enumerate(scenes):
            (image,) = pipeline.generate(
                scene.caption,
                steps=steps,
                guidance_scale=guidance,
                sampler="ddim",
                seed=1000 * (seed + 1) + index,
            ).images
            right += judge(np.asarray(image)).matches(scene)
    return right / (seeds * len(scenes)), time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("folders", type=Path, nargs="+")
    parser.add_argument("--seeds", type=int, default=1, help="pictures per caption")
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--guidance", type=float, default=5.0)
    parser.add_argument("--provider", default="cpu", help="as sdrun --provider")
    args = parser.parse_args()
    for folder in args.folders:
        share, seconds = adherence(folder, args.seeds, args.steps, args.guidance, args.provider)
        print(f"{folder}: adherence {100 * share:.1f} % ({seconds:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
