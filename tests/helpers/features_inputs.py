"""The inputs of the features stage written directly (splits, an .npy frame store, one prompts file), for tests
that run the stage without the upstream pipeline: three videos v1 / v2 / v3, one question each, 4 frames."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from cater.data.schema import Sample, write_samples
from cater.io import write_jsonl


def sample(video_id: str, split: str, answer_idx: int | None = 0) -> Sample:
    return Sample(id=f"{video_id}-q", dataset="shapes", split=split, video=f"data/videos/{video_id}.mp4", video_id=video_id,
                  question="What moved?", choices=["a circle", "a square"], answer_idx=answer_idx, question_type="what")


def prompt_row(video_id: str, num_frames: int = 4) -> dict:
    return {"video_id": video_id, "frames": [f"frame {i}" for i in range(num_frames)],
            "events": [{"start_frame": 0, "end_frame": num_frames - 1, "text": "a circle moves"}]}


def write_features_inputs(root: Path, size: int, generator: str = "gpt") -> list[Sample]:
    """Under `root`: data/splits/*.jsonl, data/frames (random uint8 frames of `size` px) and
    data/prompts/<generator>.jsonl; returns the samples."""
    samples = [sample("v1", "train"), sample("v2", "val"), sample("v3", "test")]
    for split in ("train", "val", "test"):
        write_samples(root / f"data/splits/{split}.jsonl", [s for s in samples if s.split == split])
    (root / "data/frames").mkdir(parents=True)
    rng = np.random.default_rng(0)
    index = {}
    for s in samples:
        np.save(root / f"data/frames/{s.video_id}.npy", rng.integers(0, 256, (4, size, size, 3), dtype=np.uint8))
        index[s.video_id] = {"file": f"{s.video_id}.npy", "times": [0.0, 0.5, 1.0, 1.5], "num_frames": 4}
    (root / "data/frames/index.json").write_text(json.dumps(index))
    write_jsonl(root / f"data/prompts/{generator}.jsonl", [prompt_row(s.video_id) for s in samples])
    return samples
