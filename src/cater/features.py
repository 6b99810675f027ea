"""The cached frozen-backbone features: a sharded store written incrementally and read lazily.

Layout of a features directory (format 2):

    index.json                  format, backbone, num_frames, embed_dim, token_length, video_ids (row order),
                                video_aliases (optional: ids that share another id's frames, hence its row),
                                per-sample string ids (question, qa, answer; qa_subtitles where the
                                dataset has subtitles), per-generator prompt ids, and each tensor's shards
    video/000000.safetensors    "rows" [n, T, 1+P, D] fp16: per video, each frame's CLS token then its patches
    pooled/000000.safetensors   "rows" [n, D] fp16: pooled text vectors of the sample strings (questions,
                                "question answer: choice", answers)
    prompt_tokens/000000...     "rows" [n, L, D] fp16: token-level vectors of the prompt strings only (the
                                cross-attention keys), zero past each string's length, L = token_length
    prompt_lengths/000000...    "rows" [n] int64: tokens in each prompt string (start and end of text included)
    strings.json                {"pooled": [...], "prompts": [...]}: the texts behind the ids (not read by training)

A tensor is a numbered series of safetensors files of `rows_per_shard` rows (the last one shorter), so a
store of 10,000 videos is a few hundred files: DVC re-hashes and re-pushes only the shards whose bytes
changed (rows are in sorted video-id order, so a changed video rewrites its own shard, and an added or
removed one the shards from its place on).
`ShardWriter` appends rows and never holds more than one shard; `ShardReader` reads the rows a batch asks
for with positioned reads (`os.pread`), so a reader's memory is bounded by the batch, not by the store,
and nothing is memory-mapped (no resident pages grow with the dataset either).

The library knows nothing of DVC or of the pipeline's paths: the features stage passes the directory.
"""
from __future__ import annotations

import json
import os
import struct
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

FORMAT = 2
ROWS_PER_SHARD = {"video": 64, "pooled": 65536, "prompt_tokens": 4096, "prompt_lengths": 1 << 20}
MAX_OPEN_SHARDS = 32  # per tensor and reader
_DTYPES = {"F16": np.float16, "F32": np.float32, "I64": np.int64}


def qa_string(question: str, choice: str) -> str:
    return f"{question} answer: {choice}"  # the seed's choice string


def qa_subtitles_string(question: str, choice: str, subtitles: str | None) -> str:
    """The choice string followed by the sample's subtitles (train.choice_text: qa_subtitles). The subtitles
    come last so that the text encoder's context cuts them, never the question or the choice."""
    text = " ".join((subtitles or "").split())
    return f"{qa_string(question, choice)} subtitles: {text}" if text else qa_string(question, choice)


# ---- shards ------------------------------------------------------------------------------------------------


def shard_name(number: int) -> str:
    return f"{number:06d}.safetensors"


class ShardWriter:
    """Appends rows of one tensor (fixed trailing shape and dtype) to `directory/<name>/NNNNNN.safetensors`,
    `rows_per_shard` rows per file; holds at most one shard in memory."""

    def __init__(self, directory: str | Path, name: str, rows_per_shard: int | None = None):
        self.folder = Path(directory) / name
        self.folder.mkdir(parents=True, exist_ok=True)
        self.name = name
        self.rows_per_shard = rows_per_shard or ROWS_PER_SHARD[name]
        self.buffer: list[np.ndarray] = []
        self.buffered = 0
        self.rows = 0
        self.shards: list[int] = []  # rows per written shard
        self.trailing: tuple[int, ...] | None = None
        self.dtype: np.dtype | None = None

    def append(self, rows: np.ndarray) -> None:
        rows = np.asarray(rows)
        if self.trailing is None:
            self.trailing, self.dtype = tuple(rows.shape[1:]), rows.dtype
        elif tuple(rows.shape[1:]) != self.trailing or rows.dtype != self.dtype:
            raise ValueError(f"{self.name}: rows of shape {rows.shape[1:]} {rows.dtype}, the store holds {self.trailing} {self.dtype}")
        while len(rows):
            take = min(len(rows), self.rows_per_shard - self.buffered)
            self.buffer.append(rows[:take])
            self.buffered += take
            rows = rows[take:]
            if self.buffered == self.rows_per_shard:
                self._flush()

    def _flush(self) -> None:
        if not self.buffered:
            return
        from safetensors.numpy import save_file

        data = np.ascontiguousarray(np.concatenate(self.buffer))
        save_file({"rows": data}, str(self.folder / shard_name(len(self.shards))))
        self.shards.append(len(data))
        self.rows += len(data)
        self.buffer, self.buffered = [], 0

    def close(self) -> dict[str, Any]:
        """Write the last shard; returns this tensor's entry for index.json."""
        self._flush()
        return {"rows": self.rows, "shards": self.shards, "shape": list(self.trailing or ()),
                "dtype": str(np.dtype(self.dtype or np.float16))}


class ShardReader:
    """Rows of a sharded tensor by global row number, read with os.pread: memory bounded by what is asked for."""

    def __init__(self, directory: str | Path, name: str, meta: dict[str, Any]):
        self.folder = Path(directory) / name
        self.shape = tuple(meta["shape"])
        self.dtype = np.dtype(meta["dtype"])
        self.row_bytes = int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize
        self.starts = np.cumsum([0, *meta["shards"]])
        self.rows = int(meta["rows"])
        self._files: OrderedDict[int, tuple[int, int]] = OrderedDict()  # shard -> (fd, data offset), least recent first

    def __getstate__(self) -> dict:  # file descriptors do not cross processes: a copy opens its own
        return {**self.__dict__, "_files": OrderedDict()}

    def _open(self, shard: int) -> tuple[int, int]:
        if shard in self._files:
            self._files.move_to_end(shard)
        else:
            while len(self._files) >= MAX_OPEN_SHARDS:  # TVQA windows make thousands of shards: keep a few open
                os.close(self._files.popitem(last=False)[1][0])
            path = self.folder / shard_name(shard)
            fd = -1
            try:
                fd = os.open(path, os.O_RDONLY)
                head = os.pread(fd, 8, 0)
                header_len = struct.unpack("<Q", head)[0] if len(head) == 8 else -1
                header = json.loads(os.pread(fd, header_len, 8)) if 0 < header_len < 1 << 24 else None
                entry = header.get("rows") if isinstance(header, dict) else None
                expected = [int(self.starts[shard + 1] - self.starts[shard]), *self.shape]
                if not entry or entry.get("shape") != expected or _DTYPES.get(entry.get("dtype")) != self.dtype:
                    raise ValueError(f"header {entry!r}, index.json expects rows {expected} {self.dtype}")
                begin, end = entry["data_offsets"]
                if os.fstat(fd).st_size < 8 + header_len + end or end - begin != expected[0] * self.row_bytes:
                    raise ValueError(f"{os.fstat(fd).st_size} bytes, the header needs {8 + header_len + end}")
            except Exception as exc:
                if fd >= 0:
                    os.close(fd)
                what = "missing" if isinstance(exc, FileNotFoundError) else f"damaged ({type(exc).__name__}: {exc})"
                raise ValueError(f"{path}: feature shard {what}; restore it with `dvc checkout data/features`, or "
                                 "rebuild it with `dvc repro --force features`") from None
            self._files[shard] = (fd, 8 + header_len + begin)
        return self._files[shard]

    def get(self, index) -> np.ndarray:
        """Rows at `index` (an int array of any shape) as an array of shape index.shape + row shape."""
        flat = np.asarray(index, dtype=np.int64).reshape(-1)
        if flat.size and (flat.min() < 0 or flat.max() >= self.rows):
            raise IndexError(f"{self.folder}: row index out of range 0..{self.rows - 1}")
        out = np.empty((flat.size, *self.shape), dtype=self.dtype)
        if flat.size == 0:
            return out.reshape(*np.shape(index), *self.shape)
        view = out.reshape(flat.size, -1).view(np.uint8)
        order = np.argsort(flat, kind="stable")
        shards = np.searchsorted(self.starts, flat, side="right") - 1
        i = 0
        while i < len(order):  # coalesce runs of consecutive rows in one shard into one read
            j = i
            first = flat[order[i]]
            while j + 1 < len(order) and flat[order[j + 1]] == flat[order[j]] + 1 and shards[order[j + 1]] == shards[order[i]]:
                j += 1
            shard = int(shards[order[i]])
            fd, offset = self._open(shard)
            count = j - i + 1
            data = os.pread(fd, count * self.row_bytes, offset + int(first - self.starts[shard]) * self.row_bytes)
            if len(data) != count * self.row_bytes:
                raise ValueError(f"{self.folder / shard_name(shard)}: truncated feature shard; restore it with "
                                 "`dvc checkout data/features`, or rebuild it with `dvc repro --force features`")
            view[order[i:j + 1]] = np.frombuffer(data, dtype=np.uint8).reshape(count, -1)
            i = j + 1
        return out.reshape(*np.shape(index), *self.shape)

    def close(self) -> None:
        while self._files:
            os.close(self._files.popitem()[1][0])

    def __del__(self) -> None:  # file descriptors only; nothing else to release
        try:
            self.close()
        except Exception:
            pass


# ---- the store -----------------------------------------------------------------------------------------------


@dataclass
class FeatureStoreWriter:
    """Writes a features directory: `add_video` in video order, `add_pooled` / `add_prompt_tokens` in string-id
    order, then `close(index fields)`. Memory: one shard per tensor."""

    directory: Path
    writers: dict[str, ShardWriter] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.directory = Path(self.directory)
        self.writers = {name: ShardWriter(self.directory, name) for name in ROWS_PER_SHARD}

    def add_video(self, tokens: np.ndarray) -> None:
        """[n, T, 1+P, D] fp16: each frame's CLS token first, then its patches."""
        self.writers["video"].append(np.asarray(tokens, dtype=np.float16))

    def add_pooled(self, vectors: np.ndarray) -> None:
        self.writers["pooled"].append(np.asarray(vectors, dtype=np.float16))

    def add_prompt_tokens(self, tokens: np.ndarray, lengths: np.ndarray, token_length: int) -> None:
        """[n, l, D] token vectors (l <= token_length; padded with zeros to it) and their lengths."""
        tokens = np.asarray(tokens, dtype=np.float16)
        lengths = np.asarray(lengths, dtype=np.int64)
        if tokens.shape[1] > token_length or (lengths.size and lengths.max() > token_length):
            raise ValueError(f"prompt tokens longer than token_length {token_length}")
        padded = np.zeros((tokens.shape[0], token_length, tokens.shape[2]), dtype=np.float16)
        width = min(tokens.shape[1], token_length)
        keep = np.arange(width)[None, :] < lengths[:, None]
        padded[:, :width] = np.where(keep[..., None], tokens[:, :width], 0)
        self.writers["prompt_tokens"].append(padded)
        self.writers["prompt_lengths"].append(lengths)

    def close(self, **index: Any) -> dict[str, Any]:
        """Write the last shards and index.json (with `index`'s fields); returns the index."""
        from cater.io import atomic_write_json

        tensors = {name: writer.close() for name, writer in self.writers.items()}
        full = {"format": FORMAT, **index, "tensors": tensors}
        atomic_write_json(self.directory / "index.json", full)
        return full


class CachedFeatures:
    """Read access to a features directory; every accessor reads only the rows it is asked for."""

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        index_path = self.directory / "index.json"
        if not index_path.exists():
            raise FileNotFoundError(f"{index_path}: missing; run the features stage (dvc repro features)")
        try:
            self.index = json.loads(index_path.read_text())
        except json.JSONDecodeError as exc:
            raise ValueError(f"{index_path}: damaged ({exc.msg}); restore it with `dvc checkout data/features`") from None
        if self.index.get("format") != FORMAT:
            raise ValueError(f"{index_path}: feature store format {self.index.get('format')!r}, this code reads "
                             f"format {FORMAT}; re-run the features stage (dvc repro --force features)")
        tensors = self.index["tensors"]
        self.readers = {name: ShardReader(self.directory, name, tensors[name]) for name in ROWS_PER_SHARD}
        self.video_row = {vid: i for i, vid in enumerate(self.index["video_ids"])}
        self.video_row.update({vid: self.video_row[first] for vid, first in self.index.get("video_aliases", {}).items()})
        self.prompt_lengths = torch.from_numpy(self.readers["prompt_lengths"].get(np.arange(tensors["prompt_lengths"]["rows"])))

    @property
    def embed_dim(self) -> int:
        return int(self.index["embed_dim"])

    @property
    def num_frames(self) -> int:
        return int(self.index["num_frames"])

    @property
    def token_length(self) -> int:
        return int(self.index["token_length"])

    def video(self, rows) -> tuple[torch.Tensor, torch.Tensor]:
        """(cls [B, T, D], patches [B, T, P, D]) float32 for the video rows `rows` [B]."""
        tokens = torch.from_numpy(self.readers["video"].get(np.asarray(rows))).float()
        return tokens[:, :, 0], tokens[:, :, 1:]

    def pooled(self, ids) -> torch.Tensor:
        """Pooled text vectors float32 [..., D] for sample-string ids of any shape."""
        return torch.from_numpy(self.readers["pooled"].get(np.asarray(ids))).float()

    def prompt_tokens(self, ids) -> torch.Tensor:
        """Token vectors float32 [..., L, D] for prompt-string ids of any shape (zero past each length)."""
        return torch.from_numpy(self.readers["prompt_tokens"].get(np.asarray(ids))).float()

    def prompt_ids(self, generator: str) -> dict[str, dict[str, list[int]]]:
        prompts = self.index["prompts"]
        if generator not in prompts:
            raise KeyError(f"{self.directory}/index.json: no prompts of generator {generator!r} (have {sorted(prompts)})")
        return prompts[generator]
