"""Resumable, shardable teacher scoring over samples, cached in an append-only `RowStore`.

Batches are fixed chunks of the samples sorted by id, so a batch always holds the same samples, whether
the run was interrupted, resumed, or split across processes; each finished batch is appended (flushed
and fsynced) before the next starts, so a SIGKILL loses at most the batch in flight. A cached row is
reused only while its sample's teacher-visible input (question, choices, subtitles, frames entry) is
unchanged. Under `accelerate launch` / `torchrun` the unfinished batches are split across processes;
each writes its own file, and every process returns the same assembled rows. The rows are read from the
store one at a time as they are iterated (`ScoredRows`): memory holds their locations, never the hidden states
of a whole dataset.

Row format: {"key": id, "choice_logits": [float] | None, "hard_idx": int | None,
             "hidden": encode_array(float16) | None, "missing_reason": str | None}
"""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
from tqdm.auto import tqdm

from cater.data.frames import FrameStore
from cater.data.schema import Sample
from cater.io import RowStore, encode_array, stable_hash
from cater.teachers.base import LETTERS, Teacher, TeacherError, TeacherInput, TeacherOutput

ROW_FIELDS = ("key", "choice_logits", "hard_idx", "hidden", "missing_reason")
OPTIONAL_ROW_FIELDS = ("choice_only", "projected")  # present only when true (see TeacherOutput)


def check_samples(samples: Iterable[Sample], frame_store: FrameStore, source: str = "samples") -> None:
    """Fail before any scoring if a sample has more options than letters or no stored frames."""
    seen: set[str] = set()
    for sample in samples:
        where = f"{source}: sample {sample.id!r}"
        if sample.id in seen:
            raise TeacherError(f"{where}: duplicate sample id")
        seen.add(sample.id)
        if len(sample.choices) > len(LETTERS):
            raise TeacherError(f"{where}: {len(sample.choices)} choices, but teachers have only {len(LETTERS)} "
                               f"option letters ({''.join(LETTERS)})")
        if sample.video_id not in frame_store:
            raise TeacherError(f"{where}: no frames for video {sample.video_id!r} in {frame_store.directory}")
        if frame_store.index[sample.video_id].get("num_frames") == 0:
            raise TeacherError(f"{where}: video {sample.video_id!r} has 0 stored frames in {frame_store.directory}")


def input_digest(sample: Sample, frame_store: FrameStore, source: str | None = None) -> str:
    """What the teacher sees of a sample (never the answer); a cached row is valid only for this digest. `source`:
    what else the teacher's output depends on per sample (`Teacher.sample_source`), e.g. a precomputed row."""
    extra = {} if source is None else {"source": source}
    return stable_hash({**extra, 
        "video_id": sample.video_id,
        "frames": frame_store.index.get(sample.video_id),
        "question": sample.question,
        "choices": sample.choices,
        "subtitles": sample.subtitles,
    })


def canonical_float(value: float) -> float:
    """A float32 value as the shortest decimal that round-trips, so JSON text is stable."""
    return float(str(np.float32(value)))


def output_row(output: TeacherOutput) -> dict[str, Any]:
    """The stored row of one output; the hidden state is kept as float16."""
    if output.choice_logits is None:
        return _missing_row(output.id, output.missing_reason or "teacher gave no output")
    hidden = None
    if output.hidden is not None:
        with np.errstate(over="ignore"):
            hidden = np.asarray(output.hidden, dtype=np.float16)
        if not np.isfinite(hidden).all():
            return _missing_row(output.id, "hidden state overflows float16")
    row = {
        "key": output.id,
        "choice_logits": [canonical_float(x) for x in output.choice_logits],
        "hard_idx": int(output.hard_idx),
        "hidden": None if hidden is None else encode_array(hidden),
        "missing_reason": None,
    }
    if output.choice_only:
        row["choice_only"] = True
    if output.projected:
        row["projected"] = True
    return row


def _missing_row(key: str, reason: str) -> dict[str, Any]:
    return {"key": key, "choice_logits": None, "hard_idx": None, "hidden": None, "missing_reason": reason}


def fixed_batches(samples: list[Sample], batch_size: int) -> list[list[Sample]]:
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    ordered = sorted(samples, key=lambda s: s.id)
    return [ordered[i:i + batch_size] for i in range(0, len(ordered), batch_size)]


def _teacher_inputs(batch: list[Sample], frame_store: FrameStore) -> list[TeacherInput]:
    return [TeacherInput(s.id, frame_store.load(s.video_id), s.question, list(s.choices), s.subtitles) for s in batch]


def _valid_locations(store: RowStore, digests: dict[str, str]) -> dict[str, tuple[Path, int]]:
    """Where the finished rows are, from every writer's file, whose input digest matches the sample's current one."""
    return store.locate(accept=lambda row: row["key"] in digests and row.get("input") == digests[row["key"]])


def score_samples(
    teacher: Teacher,
    samples: list[Sample],
    frame_store: FrameStore,
    store_dir: str | Path,
    config_for_hash: Any,
    batch_size: int,
    accelerator=None,
    progress: bool = True,
) -> "ScoredRows":
    """Score every sample (resuming from `store_dir`) and return the rows sorted by sample id, read lazily."""
    check_samples(samples, frame_store)
    rank = accelerator.process_index if accelerator is not None else 0
    is_main = accelerator is None or accelerator.is_main_process
    store = RowStore(store_dir, config_for_hash, writer=str(rank))
    source = getattr(teacher, "sample_source", lambda sample_id: None)  # duck-typed teachers have none
    digests = {s.id: input_digest(s, frame_store, source(s.id)) for s in samples}
    done = set(_valid_locations(store, digests))
    barrier(accelerator)  # every rank sees the same finished set before anyone appends

    todo = [batch for batch in fixed_batches(samples, batch_size) if any(s.id not in done for s in batch)]
    with _shard(accelerator, todo) as mine:
        bar = tqdm(total=sum(len(b) for b in mine), unit="sample", desc=f"teacher {teacher.family}",
                   disable=not (progress and is_main))
        for batch in mine:
            outputs = teacher.score(_teacher_inputs(batch, frame_store))
            if [o.id for o in outputs] != [s.id for s in batch]:
                raise TeacherError(f"teacher {teacher.family} returned outputs out of order or incomplete")
            store.append({**output_row(o), "input": digests[o.id]} for o in outputs if o.id not in done)
            bar.update(len(batch))
        bar.close()
    barrier(accelerator)
    return assemble(store, samples, digests)


def barrier(accelerator) -> None:
    """Wait for every process. On gloo (CPU) a plain barrier: accelerate's passes device_ids=[local rank],
    which fails on a machine with fewer GPUs than processes."""
    if accelerator is None or accelerator.num_processes == 1:
        return
    import torch.distributed as dist

    if dist.is_initialized() and dist.get_backend() == "gloo":
        dist.barrier()
    else:
        accelerator.wait_for_everyone()


@contextlib.contextmanager
def _shard(accelerator, batches: list):
    if accelerator is None or accelerator.num_processes == 1:
        yield batches
    else:
        with accelerator.split_between_processes(batches) as mine:
            yield list(mine)


class ScoredRows(Sequence):
    """The finished rows of `samples`, sorted by sample id, each read from the store when it is asked for (an
    iteration keeps the store's files open and holds one row at a time)."""

    def __init__(self, keys: list[str], locations: dict[str, tuple[Path, int]]):
        self.keys = keys
        self.locations = locations

    def __len__(self) -> int:
        return len(self.keys)

    @staticmethod
    def _public(row: dict) -> dict:
        return {field: row[field] for field in (*ROW_FIELDS, *OPTIONAL_ROW_FIELDS) if field in row}

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        return self._public(RowStore.read(self.locations[self.keys[index]]))

    def __iter__(self) -> Iterator[dict]:
        handles: dict = {}
        try:
            for key in self.keys:
                yield self._public(RowStore.read(self.locations[key], handles))
        finally:
            for handle in handles.values():
                handle.close()

    def __eq__(self, other) -> bool:
        return isinstance(other, (ScoredRows, list)) and list(self) == list(other)


def assemble(store: RowStore, samples: list[Sample], digests: dict[str, str]) -> ScoredRows:
    locations = _valid_locations(store, digests)
    keys = sorted(s.id for s in samples)
    for key in keys:
        if key not in locations:
            raise TeacherError(f"{store.directory}: no finished row for sample {key!r} after scoring")
    return ScoredRows(keys, locations)
