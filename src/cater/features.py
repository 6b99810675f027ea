"""Cached frozen-backbone features: what the features stage writes and what training reads.

    data/features/video.safetensors  cls [V, T, D], patches [V, T, P, D]        (fp16)
    data/features/text.safetensors   pooled [S, D], tokens [S, L, D], lengths [S] (fp16, L trimmed)
    data/features/index.json         video_ids, strings, per-generator prompt string ids, per-sample ids
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from safetensors.torch import load_file

NO_EVENT = "Nothing new happens."


def event_text_per_frame(events: list[dict], num_frames: int) -> list[str]:
    """The event sentences covering each frame, joined; frames outside every event get NO_EVENT."""
    texts = []
    for f in range(num_frames):
        covering = [e["text"] for e in events if e["start_frame"] <= f <= e["end_frame"]]
        texts.append(" ".join(covering) if covering else NO_EVENT)
    return texts


def qa_string(question: str, choice: str) -> str:
    return f"{question} answer: {choice}"  # the seed's choice string


@dataclass
class CachedFeatures:
    directory: Path

    def __post_init__(self) -> None:
        self.directory = Path(self.directory)
        self.index = json.loads((self.directory / "index.json").read_text())
        video, text = self._load("video.safetensors"), self._load("text.safetensors")
        self.cls, self.patches = video["cls"], video["patches"]
        self.text_pooled, self.text_tokens, self.text_lengths = text["pooled"], text["tokens"], text["lengths"]
        self.video_row = {vid: i for i, vid in enumerate(self.index["video_ids"])}

    def _load(self, name: str) -> dict:
        path = self.directory / name
        try:
            return load_file(str(path))
        except FileNotFoundError:
            raise FileNotFoundError(f"{path}: missing; run the features stage (dvc repro features)") from None
        except Exception as exc:  # SafetensorError on a truncated or foreign file
            raise ValueError(f"{path}: damaged feature file ({type(exc).__name__}: {exc}); restore it with "
                             "`dvc checkout data/features`, or rebuild it with `dvc repro --force features`") from None

    @property
    def embed_dim(self) -> int:
        return int(self.cls.shape[-1])

    @property
    def num_frames(self) -> int:
        return int(self.cls.shape[1])

    def prompt_ids(self, generator: str) -> dict[str, dict[str, list[int]]]:
        prompts = self.index["prompts"]
        if generator not in prompts:
            raise KeyError(f"{self.directory}/index.json: no prompts of generator {generator!r} (have {sorted(prompts)})")
        return prompts[generator]
