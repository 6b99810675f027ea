"""Train-epoch time with cached backbone features vs recomputing the frozen backbone every step.

Builds a small shapes workspace in a temporary directory, runs the real stages up to `features`
for each backbone, then times one training epoch both ways in the same process and prints the
ratio. Usage:

    python benchmarks/bench_cached_features.py [--videos 24] [--backbones cater-tiny ViT-B-16] [--epochs 1]
"""
from __future__ import annotations

import argparse
import copy
import os
import platform
import tempfile
import time
from pathlib import Path

import torch
import yaml

REPO = Path(__file__).resolve().parents[1]


def build_workspace(root: Path, videos: int, backbone: str) -> dict:
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["dataset"]["shapes"]["videos"] = {"train": videos, "val": 2, "test": 2}
    params["features"]["backbone"] = backbone
    params["train"]["distill"]["mode"] = "none"  # the comparison is about the backbone, not the teacher
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    from cater.stages import dataset, features, frames, prompts, splits

    args = argparse.Namespace(generator="annotations")
    for stage in (dataset, frames, splits, prompts, features):
        stage.run(params, args)
    return params


def time_run(params: dict, on_the_fly: bool, epochs: int) -> float:
    from cater.stages.train import prepare
    from cater.train import train

    params = copy.deepcopy(params)
    params["train"].update(epochs=epochs, backbone_on_the_fly=on_the_fly)
    cfg, feats, tensors, batcher = prepare(params)
    start = time.perf_counter()
    train(cfg, tensors["train"], tensors["val"], batcher, feats)
    return time.perf_counter() - start


def time_epoch(params: dict, on_the_fly: bool, epochs: int) -> float:
    """Seconds per epoch (training steps + validation), set-up excluded: (T(1 + n) - T(1)) / n."""
    return (time_run(params, on_the_fly, 1 + epochs) - time_run(params, on_the_fly, 1)) / epochs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=24, help="training videos (4 questions each)")
    parser.add_argument("--backbones", nargs="+", default=["cater-tiny", "ViT-B-16"])
    parser.add_argument("--epochs", type=int, default=2, help="timed epochs after a warm-up epoch")
    args = parser.parse_args()
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
          f"threads {torch.get_num_threads()}, cuda {torch.cuda.is_available()}")
    cwd = os.getcwd()
    for backbone in args.backbones:
        with tempfile.TemporaryDirectory() as tmp:
            os.chdir(tmp)
            try:
                params = build_workspace(Path(tmp), args.videos, backbone)
                cached = time_epoch(params, False, args.epochs)
                live = time_epoch(params, True, args.epochs)
            finally:
                os.chdir(cwd)
        print(f"{backbone:<12} train samples {4 * args.videos:>4}  epoch cached {cached:8.3f} s  "
              f"recomputed {live:8.3f} s  speed-up x{live / cached:.1f}")


if __name__ == "__main__":
    main()
