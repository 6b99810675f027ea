"""`seed_jsonl`: a teacher whose outputs were computed by the seed repository (its build_teacher_cache.py) and
ship in the seed JSONL files: `teacher_hard_idx` (the chosen option) and `teacher_embedding` (its hidden state,
already projected to the student's width and normalised by the seed).

`model` is the folder of the seed JSONL files (the dataset's `annotations`); `splits` (default: `dataset.splits`)
maps splits to file names exactly as `dataset.splits` does; a sample missing from them is an error. Rows are found by sample id (`<split>-<id>`) and read by byte offset,
so memory holds one offset per sample. The seed gives a choice, not a distribution: the stored logits are 0 for
the choice and -100 elsewhere, and the rows are marked `choice_only`, which the train stage refuses for the
distribution terms (`distill.mode` soft / hybrid); the seed's own recipe is `mode: hard` + `embed_weight`.
A row without `teacher_hard_idx` (or with -1) is missing, never filled with the answer.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from cater.teachers.base import Teacher, TeacherConfig, TeacherError, TeacherInput, TeacherOutput

NOT_CHOSEN = -100.0  # the logit of every option but the choice: softmax is one-hot to float32 precision


class SeedJsonlTeacher(Teacher):
    family = "seed_jsonl"

    def __init__(self, config: TeacherConfig):
        super().__init__(config)
        from cater.data.adapters import AdapterError
        from cater.data.seed_jsonl import DEFAULTS, iter_rows, sample_id, split_files

        unknown = set(config.extra) - {"splits"}
        if unknown:
            raise TeacherError(f"teacher family seed_jsonl: unknown option(s) {sorted(unknown)} (known: splits)")
        folder = Path(config.model)
        if not folder.is_dir():
            raise TeacherError(f"{folder}: the seed JSONL folder (teacher `model`) does not exist")
        try:
            self.files = split_files(folder, config.extra.get("splits", DEFAULTS["splits"]))
            self.locations: dict[str, tuple[Path, int, int]] = {}
            for split, path in self.files.items():
                for lineno, offset, record in iter_rows(path):
                    self.locations[sample_id(split, record.get("id"))] = (path, lineno, offset)
        except AdapterError as exc:
            raise TeacherError(str(exc)) from None
        self.hidden_size = 0

    def sample_source(self, sample_id: str) -> str | None:
        """The row's teacher fields: an edited teacher_hard_idx or teacher_embedding makes its cached row stale."""
        from cater.io import stable_hash

        found = self._row(sample_id)
        if found is None:
            return None
        record = found[1]
        return stable_hash([record.get("teacher_hard_idx"), record.get("teacher_embedding"), record.get("choices")])

    def _row(self, sample: str) -> tuple[str, dict] | None:
        where = self.locations.get(sample)
        if where is None:
            return None
        path, lineno, offset = where
        with open(path, "rb") as handle:
            handle.seek(offset)
            return f"{path}:{lineno}", json.loads(handle.readline())

    def score(self, batch: list[TeacherInput]) -> list[TeacherOutput]:
        outputs = []
        for item in batch:
            found = self._row(item.id)
            if found is None:
                raise TeacherError(f"sample {item.id} is not in the seed JSONL files {sorted(str(p) for p in self.files.values())}; "
                                   "the teacher reads the dataset's own files (teacher `model` = dataset.annotations, "
                                   "`splits` = dataset.splits)")
            where, record = found
            if record.get("choices") != item.choices:
                raise TeacherError(f"{where}: the choices differ from sample {item.id}'s; the teacher files and the dataset "
                                   "are not the same release")
            hard = record.get("teacher_hard_idx")
            if hard is None or hard == -1:
                outputs.append(TeacherOutput(item.id, None, None, None, "no teacher_hard_idx in the seed JSONL"))
                continue
            if isinstance(hard, bool) or not isinstance(hard, int) or not 0 <= hard < len(item.choices):
                raise TeacherError(f"{where}: field 'teacher_hard_idx' is {hard!r}, not an option index of "
                                   f"{len(item.choices)} choices")
            embedding = record.get("teacher_embedding")
            hidden = None
            if embedding is not None:
                if not isinstance(embedding, list) or not embedding:
                    raise TeacherError(f"{where}: field 'teacher_embedding' must be a non-empty list of numbers")
                try:
                    hidden = np.asarray(embedding, dtype=np.float32)
                except (TypeError, ValueError):
                    raise TeacherError(f"{where}: field 'teacher_embedding' must be a list of numbers") from None
                if hidden.ndim != 1:
                    raise TeacherError(f"{where}: field 'teacher_embedding' must be a flat list")
                if not np.isfinite(hidden).all():
                    outputs.append(TeacherOutput(item.id, None, None, None, "non-finite teacher_embedding"))
                    continue
            logits = [0.0 if i == hard else NOT_CHOSEN for i in range(len(item.choices))]
            outputs.append(TeacherOutput(item.id, logits, hard, hidden, choice_only=True, projected=hidden is not None))
        return outputs
