"""Teacher scoring throughput: one batched pass per batch vs the older per-option way (C+1 passes per sample).

    python benchmarks/bench_teacher_scoring.py [--samples 32] [--batch-size 8] [--choices 5] [--model PATH]

Runs both on the same tiny Video-LLaVA (written to a temp folder unless --model is given) in the same
process and prints samples/s for each and their ratio.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402

from cater.teachers.base import TeacherConfig, TeacherInput  # noqa: E402
from cater.teachers.videollava import VideoLlavaTeacher
from cater.testing.tiny.videollava import write_tiny_videollava  # noqa: E402


def make_inputs(n: int, choices: int, frames: int, seed: int = 0) -> list[TeacherInput]:
    rng = np.random.default_rng(seed)
    options = ["a red circle", "a blue square", "a green triangle", "a yellow star", "nothing moves"][:choices]
    return [
        TeacherInput(f"s{i}", rng.integers(0, 256, (frames, 36, 44, 3), dtype=np.uint8),
                     "What happens first in the clip" + "?" * (1 + i % 4), options)
        for i in range(n)
    ]


def throughput(fn, batches: list[list[TeacherInput]], repeats: int) -> float:
    fn(batches[0])  # warm-up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for batch in batches:
            fn(batch)
        best = min(best, time.perf_counter() - start)
    return sum(len(b) for b in batches) / best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--choices", type=int, default=5)
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--model", help="checkpoint to use (default: a fresh tiny Video-LLaVA)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        model = args.model or str(write_tiny_videollava(os.path.join(tmp, "videollava"), seed=0))
        teacher = VideoLlavaTeacher(TeacherConfig(family="videollava", model=model, device=args.device))
        items = make_inputs(args.samples, args.choices, args.frames)
        batches = [items[i:i + args.batch_size] for i in range(0, len(items), args.batch_size)]
        one_pass = throughput(teacher.score, batches, args.repeats)
        per_option = throughput(teacher.score_per_option, batches, args.repeats)

    print(f"model: {model if args.model else 'tiny Video-LLaVA'}  device: {args.device}  samples: {args.samples}  "
          f"batch: {args.batch_size}  choices: {args.choices}  frames: {args.frames}")
    print(f"one-pass batched : {one_pass:9.1f} samples/s")
    print(f"per-option (C+1) : {per_option:9.1f} samples/s")
    print(f"speed-up         : {one_pass / per_option:9.2f}x")


if __name__ == "__main__":
    main()
