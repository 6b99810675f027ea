"""The training data: teacher outputs, the index tensors of a split, the batches read from the feature store,
the labelled subset (train.label_fraction) and the shuffled-prompt control's derangement."""
from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import torch

from cater.data.schema import Sample
from cater.features import CachedFeatures
from cater.io import decode_array, jsonl_lines
from cater.train.config import TrainConfig


def labelled_subset(samples: list[Sample], fraction: float, seed: int) -> set[str]:
    """The ids of a seeded `fraction` of the labelled samples, drawn per question type (at least one each)."""
    by_type: dict[str, list[str]] = {}
    for s in samples:
        if s.answer_idx is not None:
            by_type.setdefault(s.question_type or "", []).append(s.id)
    chosen: set[str] = set()
    for qtype, ids in sorted(by_type.items()):
        ids = sorted(ids)
        random.Random(f"{seed}:{qtype}").shuffle(ids)
        chosen.update(ids[: max(1, round(fraction * len(ids)))])
    return chosen


def derangement(items: list[str], seed: int) -> dict[str, str]:
    """Map every item to a different item (the shuffled-prompt control), deterministically."""
    if len(items) < 2:
        raise ValueError("the random prompt variant needs at least 2 videos")
    order = sorted(items)
    rng = random.Random(seed)
    rng.shuffle(order)
    return {order[i]: order[(i + 1) % len(order)] for i in range(len(order))}


class TeacherOutputs(dict):
    """The teacher stage's rows by sample id, and the file they came from (named in errors)."""

    def __init__(self, rows: dict[str, dict], path: Path | str | None = None):
        super().__init__(rows)
        self.path = path


def load_teacher_outputs(path: Path, keep_hidden: bool = True) -> TeacherOutputs:
    """The rows by sample id, without their hidden states (a 4096-wide vector each for a 7B teacher): with
    `keep_hidden` a row keeps where its line starts (`hidden_at`), the vector's width and whether it is
    finite, and `TeacherHidden` reads it again when a batch needs it; memory holds only the letter logits."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: teacher outputs missing (run or pull the teacher stage)")
    rows = {}
    for lineno, start, line in jsonl_lines(path):
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}:{lineno}: malformed JSON ({exc.msg})") from None
        if not isinstance(row, dict) or not isinstance(row.get("key"), str):
            raise ValueError(f"{path}:{lineno}: expected an object with a string field 'key'")
        blob = row.pop("hidden", None)
        if keep_hidden and blob:
            vector = decode_array(blob)
            row.update(hidden_at=start, hidden_width=int(vector.shape[-1]), hidden_finite=bool(np.isfinite(vector).all()))
        rows[row["key"]] = row
    return TeacherOutputs(rows, path)


class TeacherHidden:
    """The teacher's hidden state of each row of a split, read from the outputs file when a batch asks for it
    (memory bounded by the batch). A locator is a byte offset into `path`, an inline encoded array, or None
    (no usable hidden state: zeros, masked out of the align term by `teacher_hidden_valid`)."""

    def __init__(self, path: Path | str | None, locators: list, width: int):
        self.path, self.locators, self.width = path, locators, width
        self._handle = None

    def __getstate__(self) -> dict:  # an open file does not cross processes: a copy opens its own
        return {**self.__dict__, "_handle": None}

    @property
    def shape(self) -> tuple[int, int]:
        return len(self.locators), self.width

    def _blob(self, locator):
        if isinstance(locator, dict):
            return locator
        if self._handle is None:
            self._handle = open(self.path, "rb")
        self._handle.seek(locator)
        return json.loads(self._handle.readline())["hidden"]

    def __getitem__(self, rows) -> torch.Tensor:
        index = torch.as_tensor(rows)
        flat = index.reshape(-1).tolist()
        out = torch.zeros(len(flat), self.width)
        for k, row in enumerate(flat):
            locator = self.locators[row]
            if locator is not None:
                out[k] = torch.from_numpy(decode_array(self._blob(locator)).astype(np.float32))
        return out.reshape(*index.shape, self.width)


class SplitTensors:
    """Everything one split needs, as index tensors into the cached features."""

    def __init__(self, samples: list[Sample], features: CachedFeatures, cfg: TrainConfig, teacher: dict[str, dict] | None,
                 random_map: dict[str, str] | None, labelled: set[str] | None = None):
        if not samples:
            raise ValueError("empty split")
        index = features.index
        t = features.num_frames
        c = max(len(s.choices) for s in samples)
        n = len(samples)
        self.ids = [s.id for s in samples]
        self.question_types = [s.question_type for s in samples]
        self.video_ids = [s.video_id for s in samples]
        self.video_row = torch.tensor([features.video_row[s.video_id] for s in samples])
        # -100 = no label: unlabelled splits (TVQA test_public) and the samples outside `labelled` (train.label_fraction)
        self.labels = torch.tensor([s.answer_idx if s.answer_idx is not None and (labelled is None or s.id in labelled) else -100
                                    for s in samples])
        self.choice_ids = torch.zeros(n, c, dtype=torch.long)
        self.choice_mask = torch.zeros(n, c, dtype=torch.bool)
        self.question_ids = torch.tensor([index["samples"][s.id]["question"] for s in samples])
        self.prompt_ids = torch.full((n, t), -1, dtype=torch.long)
        key = cfg.choice_text
        if samples and key not in index["samples"][samples[0].id]:
            raise ValueError(f"train.choice_text: {key}: the features store has no such texts; the features stage writes "
                             f"them only for datasets with subtitles (TVQA with dataset.subtitles set)")
        prompts = None if cfg.prompt_variant == "none" else features.prompt_ids(cfg.prompt_generator)
        kind = "frame" if cfg.prompt_variant == "frame" else "event"
        self.missing_prompts = 0
        for i, s in enumerate(samples):
            ids = index["samples"][s.id][key]
            self.choice_ids[i, : len(ids)] = torch.tensor(ids)
            self.choice_mask[i, : len(ids)] = True
            if prompts is not None:
                source = random_map[s.video_id] if cfg.prompt_variant == "random" else s.video_id
                if source in prompts:
                    self.prompt_ids[i] = torch.tensor(prompts[source][kind])
                else:
                    self.missing_prompts += 1
        self.teacher_logits = torch.zeros(n, c)
        self.teacher_valid = torch.zeros(n, dtype=torch.bool)  # finite teacher logits: the hard / soft terms
        self.teacher_hidden = None
        self.teacher_hidden_valid = torch.zeros(n, dtype=torch.bool)  # a finite teacher hidden state: the align term
        self.nonfinite_teacher_rows = 0  # rows whose choice_logits hold NaN / inf: used as missing
        self.nonfinite_teacher_hidden = 0  # rows whose hidden state holds NaN / inf: no align target
        self.teacher_hidden_projected = False  # the rows' hidden states are embeddings in the student's space already
        self.teacher_source = None
        if teacher is not None:
            source = getattr(teacher, "path", None) or "teacher outputs"
            self.teacher_source = source
            self.teacher_hidden_projected = any(bool(row.get("projected")) for row in teacher.values())
            hidden = []
            for i, s in enumerate(samples):
                row = teacher.get(s.id)
                if row is not None and row.get("choice_only") and cfg.distill.mode in ("soft", "hybrid"):
                    raise ValueError(
                        f"{source}: sample {s.id!r}: the teacher gives only its choice (a seed JSONL teacher_hard_idx), "
                        f"not a distribution, so train.distill.mode {cfg.distill.mode} would distil a one-hot; use mode "
                        "hard (the seed's hybrid is mode hard + embed_weight 0.4)")
                if row is not None and row.get("choice_logits") is not None:
                    logits = row["choice_logits"]
                    if len(logits) != len(s.choices):
                        raise ValueError(
                            f"{source}: sample {s.id!r}: field choice_logits has {len(logits)} values, but the sample has "
                            f"{len(s.choices)} choices (the teacher outputs do not belong to these splits; re-run the teacher stage)")
                    values = torch.tensor([float("nan") if x is None else x for x in logits], dtype=torch.float32)
                    if torch.isfinite(values).all():
                        self.teacher_logits[i, : len(values)] = values
                        self.teacher_valid[i] = True
                    else:
                        self.nonfinite_teacher_rows += 1
                locator, width, finite = None, 0, False
                if row and row.get("hidden"):  # inline (rows given directly rather than read by load_teacher_outputs)
                    vector = decode_array(row["hidden"])
                    locator, width, finite = row["hidden"], int(vector.shape[-1]), bool(np.isfinite(vector).all())
                elif row and "hidden_at" in row:
                    locator, width, finite = row["hidden_at"], row["hidden_width"], row["hidden_finite"]
                if locator is not None and not finite:
                    self.nonfinite_teacher_hidden += 1
                hidden.append((locator if finite else None, width))
            width = next((w for locator, w in hidden if locator is not None), 0)
            for s, (locator, w) in zip(samples, hidden):
                if locator is not None and w != width:
                    raise ValueError(f"{source}: sample {s.id!r}: field hidden has {w} values, other rows have {width} "
                                     "(the outputs mix teachers; re-run the teacher stage)")
            if width:
                self.teacher_hidden = TeacherHidden(source if source != "teacher outputs" else None,
                                                    [locator for locator, _ in hidden], width)
                self.teacher_hidden_valid = torch.tensor([locator is not None for locator, _ in hidden], dtype=torch.bool)

    def __len__(self) -> int:
        return len(self.ids)


class FeatureBatcher:
    """Turns a batch of row indices into the student's inputs, read from the feature store (only the rows the
    batch needs) or, for the visual part, from the live backbone."""

    def __init__(self, features: CachedFeatures, backbone=None, frame_store=None):
        self.features = features
        self.positions = torch.arange(features.token_length)
        self.backbone, self.frame_store = backbone, frame_store

    def visual(self, split: SplitTensors, rows: torch.Tensor):
        if self.backbone is None:
            return self.features.video(split.video_row[rows])
        frames = np.concatenate([self.frame_store.load(split.video_ids[int(r)]) for r in rows])
        cls, patches = self.backbone.frame_features(frames)
        b, t = len(rows), self.features.num_frames
        return cls.float().reshape(b, t, -1).cpu(), patches.float().reshape(b, t, patches.shape[1], -1).cpu()

    def __call__(self, split: SplitTensors, rows: torch.Tensor) -> dict[str, torch.Tensor]:
        cls, patches = self.visual(split, rows)
        prompt_ids = split.prompt_ids[rows]
        has_prompt = prompt_ids >= 0
        safe = prompt_ids.clamp(min=0)
        if len(self.features.prompt_lengths):
            prompt_tokens = self.features.prompt_tokens(safe)
            prompt_pad = self.positions >= self.features.prompt_lengths[safe][..., None]
        else:  # a store without prompt strings (no generator): every frame goes without a prompt
            prompt_tokens = torch.zeros(*safe.shape, len(self.positions), self.features.embed_dim)
            prompt_pad = torch.ones(*safe.shape, len(self.positions), dtype=torch.bool)
        batch = {
            "cls": cls,
            "patches": patches,
            "prompt_tokens": prompt_tokens,
            "prompt_pad": prompt_pad,
            "has_prompt": has_prompt,
            "choices": self.features.pooled(split.choice_ids[rows]),
            "choice_mask": split.choice_mask[rows],
            "question": self.features.pooled(split.question_ids[rows]),
            "labels": split.labels[rows],
            "teacher_logits": split.teacher_logits[rows],
            "teacher_valid": split.teacher_valid[rows],
        }
        if split.teacher_hidden is not None:
            batch["teacher_hidden"] = split.teacher_hidden[rows]
            batch["teacher_hidden_valid"] = split.teacher_hidden_valid[rows]
        return batch


class BatchCollate:
    """The DataLoader's collate_fn: row indices -> the batch; a class, not a lambda, so spawned workers can pickle it."""

    def __init__(self, batcher: FeatureBatcher, split: SplitTensors):
        self.batcher, self.split = batcher, split

    def __call__(self, rows: list[int]) -> dict[str, torch.Tensor]:
        return self.batcher(self.split, torch.tensor(rows))
