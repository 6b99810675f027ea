"""Peak memory, time and disk of the real stages from `features` to `eval` at N and 4N videos.

Synthetic workspaces with MSRVTT-QA's question density (24 questions per video, 5 options) and
ViT-B-16's stored shapes: 8 frames of 224 px, 197 tokens per frame (CLS + 14x14 patches), 512-wide
token and text vectors. The backbone is `cater-b16-shapes` (src/cater/models/model_configs): those
input and output shapes with a 1-layer, 64-wide transformer inside, so the CPU time goes to what
this benchmark measures (stores, batching, training), not to ViT-B-16's arithmetic; the stored
features have exactly ViT-B-16's size. The student pools frames by their CLS token (`--frame-pool cls`)
for the same reason; its batches still read every patch token from the store. Each stage runs as its own process (`python -m
cater.stages.<stage>`); its peak RSS is that process's ru_maxrss (os.wait4).

    python benchmarks/bench_scale.py [--videos 500] [--factor 4] [--questions 24] [--keep DIR]

Prints one row per (N, stage): peak RSS, wall time, and output bytes per video; the last line is
`scale: rss_ratio=<peak RSS at 4N / at N, worst stage> (<stage>)`.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]
STAGES = ("features", "train", "eval")
NUM_FRAMES, SIZE, CHOICES = 8, 224, 5
SPLIT_SHARE = {"train": 0.7, "val": 0.1, "test": 0.2}
WORDS = [f"w{i}" for i in range(400)]


def write_workspace(root: Path, videos: int, questions: int, hidden: int, frame_pool: str, seed: int = 0) -> None:
    """splits, frames, one prompts file and one teacher's outputs, in the pipeline's formats."""
    from cater.data.schema import Sample, write_samples
    from cater.io import encode_array, write_jsonl

    rng = np.random.default_rng(seed)
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["frames"].update(num_frames=NUM_FRAMES, size=SIZE)
    params["features"].update(backbone="cater-b16-shapes", device="cpu", batch_size=256)
    params["prompts"]["generators"] = {"bench": {"backend": "annotations", "omit_prob": 0.0, "confuse_prob": 0.0, "seed": 0}}
    params["teacher"]["models"] = {"bench": {"family": "videollava", "model": "unused"}}
    params["train"].update(prompt_generator="bench", teacher="bench", epochs=1)
    params["train"]["student"]["frame_pool"] = frame_pool
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))

    frames = root / "data/frames"
    frames.mkdir(parents=True)
    index, samples, prompts, teacher = {}, {"train": [], "val": [], "test": []}, [], []
    bounds = np.cumsum([0] + [round(share * videos) for share in SPLIT_SHARE.values()])
    for v in range(videos):
        split = list(SPLIT_SHARE)[min(int(np.searchsorted(bounds, v, side="right")) - 1, 2)]
        vid = f"video{v}"
        pixels = rng.integers(0, 256, (NUM_FRAMES, SIZE, SIZE, 3), dtype=np.uint8)
        np.save(frames / f"{vid}.npy", pixels)
        index[vid] = {"file": f"{vid}.npy", "times": [0.5 * f for f in range(NUM_FRAMES)], "num_frames": NUM_FRAMES}
        words = rng.choice(WORDS, size=(NUM_FRAMES, 6))
        prompts.append({"video_id": vid, "frames": [f"a frame with {' '.join(w)}" for w in words],
                        "events": [{"start_frame": 0, "end_frame": 3, "text": f"first {words[0, 0]} moves"},
                                   {"start_frame": 4, "end_frame": 7, "text": f"then {words[4, 0]} stops"}]})
        for q in range(questions):
            choices = list(rng.choice(WORDS, size=CHOICES, replace=False))
            answer = int(rng.integers(CHOICES))
            sample = Sample(id=f"{vid}-q{q}", dataset="msrvtt_qa", split=split, video=f"data/raw/x/{vid}.mp4", video_id=vid,
                            question=f"what is {rng.choice(WORDS)} doing with {rng.choice(WORDS)} in {vid}?",
                            choices=choices, answer_idx=answer, question_type=["what", "who", "how"][q % 3])
            samples[split].append(sample)
            if split == "train":
                logits = rng.normal(size=CHOICES)
                teacher.append({"key": sample.id, "choice_logits": logits.tolist(), "hard_idx": int(logits.argmax()),
                                "hidden": encode_array(rng.normal(size=hidden).astype(np.float32))})
    (frames / "index.json").write_text(json.dumps(index))
    for split, rows in samples.items():
        write_samples(root / f"data/splits/{split}.jsonl", rows)
    write_jsonl(root / "data/prompts/bench.jsonl", prompts)
    write_jsonl(root / "data/prompts/bench.failures.jsonl", [])
    write_jsonl(root / "data/teacher/bench/outputs.jsonl", teacher)


def run_stage(root: Path, stage: str) -> tuple[float, float]:
    """(peak RSS in MB, seconds) of `python -m cater.stages.<stage>` in `root`."""
    module = {"eval": "evaluate"}.get(stage, stage)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1"}
    start = time.perf_counter()
    process = subprocess.Popen([sys.executable, "-m", f"cater.stages.{module}"], cwd=root, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    output = process.stdout.read().decode()
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - start
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise SystemExit(f"{stage} failed in {root}:\n{output[-3000:]}")
    return usage.ru_maxrss / 1024, seconds


def disk_bytes(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


OUTPUTS = {"features": "data/features", "train": "models/student.safetensors", "eval": "metrics/eval.json"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=500)
    parser.add_argument("--factor", type=int, default=4)
    parser.add_argument("--questions", type=int, default=24, help="questions per video (MSRVTT-QA: 243,680 / 10,000)")
    parser.add_argument("--hidden", type=int, default=1024, help="teacher hidden width in its outputs file")
    parser.add_argument("--frame-pool", default="cls", help="student frame_pool (default cls: only the CLS token enters the "
                        "cross-attention, which keeps CPU time down; the batches still carry every patch token)")
    parser.add_argument("--keep", type=Path, help="keep the workspaces under this folder")
    args = parser.parse_args()
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB, python {platform.python_version()}")
    base = args.keep or Path(tempfile.mkdtemp(prefix="bench-scale-"))
    results: dict[int, dict[str, tuple[float, float, float]]] = {}
    print(f"{'videos':>7} {'questions':>9} {'stage':>9} {'peak RSS MB':>12} {'seconds':>9} {'output bytes/video':>19}")
    try:
        for videos in (args.videos, args.videos * args.factor):
            root = base / f"n{videos}"
            shutil.rmtree(root, ignore_errors=True)
            root.mkdir(parents=True)
            write_workspace(root, videos, args.questions, args.hidden, args.frame_pool)
            results[videos] = {}
            for stage in STAGES:
                rss, seconds = run_stage(root, stage)
                per_video = disk_bytes(root / OUTPUTS[stage]) / videos
                results[videos][stage] = (rss, seconds, per_video)
                print(f"{videos:>7} {videos * args.questions:>9} {stage:>9} {rss:>12.0f} {seconds:>9.1f} {per_video:>19,.0f}", flush=True)
            if not args.keep:
                shutil.rmtree(root)
    finally:
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)
    small, large = results[args.videos], results[args.videos * args.factor]
    ratios = {stage: large[stage][0] / small[stage][0] for stage in STAGES}
    worst = max(ratios, key=ratios.get)
    print("per-stage RSS ratio: " + ", ".join(f"{s} {r:.2f}" for s, r in ratios.items()))
    print(f"scale: rss_ratio={ratios[worst]:.2f} ({worst})")


if __name__ == "__main__":
    main()
