"""Uniform frame sampling with decord, the on-disk frame store every later stage reads, and the
check that keeps the videos a samples file names inside the folders the dataset declares.

Layout of a frame store directory:
    index.json          {video_id: {"file": "<name>.<ext>", "times": [...], "num_frames": N, "digest": ...}}
    <name>.npz          codec png (default, lossless) or jpeg: one image per frame, members f0..f{N-1}
                        (uint8 byte arrays; np.load with allow_pickle off reads them)
    <name>.npy          codec npy: the raw uint8 [N, H, W, 3] array
Every frame has its short side resized to `size`; <name> is `frame_stem(video_id)`, a plain file
name (`cater.io.safe_name`). `FrameStore.load` returns uint8 [N, H, W, 3] whatever the codec.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from cater.choices import FRAME_CODECS
from cater.io import safe_name, stable_hash


class BadVideoError(RuntimeError):
    """A video could not be decoded; the message names the file and the reason."""


def uniform_indices(total: int, n: int, first: int = 0, last: int | None = None) -> list[int]:
    """`n` frame indices at the centres of `n` equal segments of [first, last]."""
    last = total - 1 if last is None else min(last, total - 1)
    first = max(0, min(first, last))
    span = last - first + 1
    return [first + min(span - 1, int((i + 0.5) * span / n)) for i in range(n)]


def window_of_at_least(total: int, n: int, first: int, last: int, where: str) -> tuple[int, int]:
    """[first, last] widened about its centre (kept inside the clip) to hold `n` distinct frames, so no
    frame is stored twice; a clip of fewer than `n` frames is a BadVideoError naming `where`."""
    if total < n:
        raise BadVideoError(f"{where}: {total} decodable frame(s), fewer than frames.num_frames ({n}); "
                            "frames would repeat (lower frames.num_frames, or drop the clip with frames.skip_bad)")
    last = min(last, total - 1)
    missing = n - (last - first + 1)
    if missing > 0:
        first = max(0, first - (missing + 1) // 2)
        last = min(total - 1, first + n - 1)
        first = last - n + 1
    return first, last


def resize_short_side(frames: np.ndarray, size: int) -> np.ndarray:
    """Resize uint8 [N, H, W, 3] so the short side is `size` (bilinear, antialiased)."""
    import torch
    import torch.nn.functional as F

    n, h, w, _ = frames.shape
    if min(h, w) == size:
        return frames
    scale = size / min(h, w)
    out_h, out_w = max(size, round(h * scale)), max(size, round(w * scale))
    tensor = torch.from_numpy(frames).permute(0, 3, 1, 2).float()
    resized = F.interpolate(tensor, size=(out_h, out_w), mode="bilinear", antialias=True, align_corners=False)
    return resized.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()


def window_overrun(end: float | None, total: int, fps: float) -> float:
    """Seconds by which a window's end lies past the clip's last frame (0 when it does not)."""
    return 0.0 if end is None else max(0.0, round(end - (total - 1) / fps, 4))


def decode_video(path: str | Path, num_frames: int, size: int, start: float | None = None, end: float | None = None,
                 report: dict | None = None):
    """Decode `num_frames` uniform frames of `path` (optionally inside [start, end] seconds). A window that ends
    past the clip is cut at its last frame; with `report`, report["past_end_s"] says by how many seconds.

    Returns (frames uint8 [N, size-short-side, ..., 3], times in seconds). The decord reader is
    created here, inside whichever process calls this, never in a parent before a fork.
    """
    path = Path(path)
    if not path.exists():
        raise BadVideoError(f"{path}: file not found")
    if path.stat().st_size == 0:
        raise BadVideoError(f"{path}: zero-length file")
    if path.is_dir():
        return _decode_frame_folder(path, num_frames, size, start, end, report=report)
    # torch before decord: decord's import loads libnvblas, and a libtorch_cpu loaded after it binds its BLAS
    # calls there, so the next CPU attention in this process segfaults (tests/test_frames.py)
    import torch  # noqa: F401
    import decord

    try:
        reader = decord.VideoReader(str(path), num_threads=1)
        total = len(reader)
        if total == 0:
            raise BadVideoError(f"{path}: no decodable frames")
        fps = float(reader.get_avg_fps()) or 1.0
        declared = _declared_frames(path)
        if declared and total < 0.95 * declared:
            raise BadVideoError(f"{path}: truncated (decodable frames {total} of {declared} declared in the header)")
        first = 0 if start is None else int(start * fps)
        last = total - 1 if end is None else int(end * fps)
        if first > total - 1:
            raise BadVideoError(f"{path}: window {start}-{end}s lies outside the clip (0-{total / fps:.2f}s)")
        if report is not None and window_overrun(end, total, fps):
            report["past_end_s"] = window_overrun(end, total, fps)
        first, last = window_of_at_least(total, num_frames, first, last, str(path))
        indices = uniform_indices(total, num_frames, first, last)
        frames = reader.get_batch(indices).asnumpy()
    except BadVideoError:
        raise
    except Exception as exc:  # decord raises DECORDError and RuntimeError subclasses
        raise BadVideoError(f"{path}: cannot decode ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})") from None
    if frames.shape[0] != num_frames:
        raise BadVideoError(f"{path}: decoded {frames.shape[0]} of {num_frames} frames")
    times = [round(i / fps, 4) for i in indices]
    return resize_short_side(frames, size), times


def _declared_frames(path: Path) -> int:
    """The frame count the container header declares (0 when it declares none)."""
    import av

    with av.open(str(path)) as container:
        return int(container.streams.video[0].frames or 0) if container.streams.video else 0


def _decode_frame_folder(path: Path, num_frames: int, size: int, start, end, fps: float = 3.0, report: dict | None = None):
    """A folder of extracted frames (TVQA ships frames at 3 fps as 00001.jpg, ...)."""
    from PIL import Image

    files = sorted(p for p in path.iterdir() if p.suffix.lower() in {".jpg", ".jpeg", ".png"})
    if not files:
        raise BadVideoError(f"{path}: frame folder holds no images")
    first = 0 if start is None else int(start * fps)
    last = len(files) - 1 if end is None else int(end * fps)
    if first > len(files) - 1:
        raise BadVideoError(f"{path}: window {start}-{end}s lies outside the clip (0-{len(files) / fps:.2f}s)")
    if report is not None and window_overrun(end, len(files), fps):
        report["past_end_s"] = window_overrun(end, len(files), fps)
    first, last = window_of_at_least(len(files), num_frames, first, last, str(path))
    indices = uniform_indices(len(files), num_frames, first, last)
    try:
        frames = np.stack([np.asarray(Image.open(files[i]).convert("RGB")) for i in indices])
    except Exception as exc:
        raise BadVideoError(f"{path}: cannot read frame image ({exc})") from None
    return resize_short_side(frames, size), [round(i / fps, 4) for i in indices]


def frame_stem(video_id: str) -> str:
    """A collision-free file stem for a video id that is a plain file name whatever the id holds.

    Characters outside [A-Za-z0-9._-] become `_`, the last 60 are kept, a leading `.` or `-` becomes `_`
    (no `..`, no hidden file, no option-like name), and a hash of the full id keeps ids apart.
    """
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", video_id)[-60:]
    if not stem or stem[0] in ".-":
        stem = "_" + stem[1:]
    return safe_name(f"{stem}-{hashlib.sha1(video_id.encode()).hexdigest()[:8]}", f"frame file stem of video {video_id!r}")


# ---- frame files: raw or one encoded image per frame ----------------------------------------------------------


def frames_suffix(codec: str) -> str:
    if codec not in FRAME_CODECS:
        raise ValueError(f"frames.codec {codec!r} is unknown; use one of {', '.join(FRAME_CODECS)}")
    return ".npy" if codec == "npy" else ".npz"


def save_frames(path: str | Path, frames: np.ndarray, codec: str = "png", quality: int = 95) -> None:
    """Write uint8 [N, H, W, 3] to `path` (suffix from `frames_suffix(codec)`), atomically."""
    import io

    from PIL import Image

    from cater.io import atomic_path

    arrays = None
    if codec != "npy":
        arrays = {}
        for i, frame in enumerate(frames):
            buffer = io.BytesIO()
            if codec == "png":
                Image.fromarray(frame).save(buffer, format="PNG", compress_level=1)
            else:
                Image.fromarray(frame).save(buffer, format="JPEG", quality=quality, subsampling=0)
            arrays[f"f{i}"] = np.frombuffer(buffer.getvalue(), dtype=np.uint8)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:
            if arrays is None:
                np.save(handle, np.ascontiguousarray(frames))
            else:
                np.savez(handle, **arrays)


def pixel_digest(frames: np.ndarray) -> str:
    """A hash of decoded frames (shape and pixels): the same for every codec that stores the same pixels, and
    independent of the encoder build (caches downstream key on it)."""
    frames = np.ascontiguousarray(frames)
    digest = hashlib.sha256(repr(frames.shape).encode())
    digest.update(frames.tobytes())
    return digest.hexdigest()[:16]


def frames_problem(path: str | Path) -> str | None:
    """Why a frame file is incomplete (None when it is whole), for either container."""
    from cater.io import npy_problem, npz_problem

    return npy_problem(path) if str(path).endswith(".npy") else npz_problem(path)


def load_frames(path: str | Path, mmap: bool = False) -> np.ndarray:
    """uint8 [N, H, W, 3] from a file `save_frames` wrote (`mmap` maps a raw .npy instead of reading it)."""
    import io

    from PIL import Image

    if str(path).endswith(".npy"):
        return np.load(path, mmap_mode="r" if mmap else None)
    with np.load(path) as archive:  # allow_pickle stays off
        count = len(archive.files)
        names = [f"f{i}" for i in range(count)]
        if sorted(archive.files) != sorted(names):
            raise ValueError(f"members {sorted(archive.files)[:5]}..., expected f0..f{count - 1}")
        return np.stack([np.asarray(Image.open(io.BytesIO(archive[name].tobytes())).convert("RGB")) for name in names])


# ---- where sample videos may be read from ----------------------------------------------------------------------


class MediaPathError(ValueError):
    """A sample's `video` lies outside the allowed media roots; the message names the file, sample, field and path."""


REPO_DATA = Path("data")  # relative to the repository root, where every stage runs


def media_roots(repo_data: str | Path = REPO_DATA) -> list[Path]:
    """The folders sample videos may be read from: the repository's `data/` only. Official datasets are
    found under `data/raw/<dataset>` (a folder or a symlink to where the release lives), so every path a
    samples file holds is repository-relative and the same on every machine."""
    return [Path(repo_data)]


def _inside(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def check_media_paths(samples: Iterable, roots: Sequence[str | Path], source: str) -> None:
    """Refuse (MediaPathError) any sample whose `video` lies outside every root.

    A `video` must be a relative path without any `..` component that lies inside a root as written. Links
    the repository itself holds under a root (data/raw/<dataset> to where a release lives, DVC's symlink
    cache) stay usable; a samples file can neither name an absolute path nor climb out with `..` (which the
    kernel would apply after following such a link, so it is refused outright, not folded away).
    """
    lexical = [Path(os.path.abspath(root)) for root in roots]
    checked: dict[str, bool] = {}
    for sample in samples:
        video = sample.video
        if video not in checked:
            path = Path(video)
            checked[video] = (not path.is_absolute() and ".." not in path.parts
                              and any(_inside(Path(os.path.abspath(path)), root) for root in lexical))
        if not checked[video]:
            allowed = ", ".join(str(root) for root in roots)
            raise MediaPathError(
                f"{source}: sample {sample.id!r}: field 'video' is {video!r}, outside the allowed media roots ({allowed}); "
                "videos must lie under data/ (official datasets under data/raw/<dataset>, a folder or a symlink)")


@dataclass
class FrameStore:
    """Read access to a frames directory written by the frames stage."""

    directory: Path

    def __post_init__(self) -> None:
        self.directory = Path(self.directory)
        index_path = self.directory / "index.json"
        if not index_path.exists():
            raise FileNotFoundError(f"{index_path}: frame index missing; run the frames stage first")
        self.index: dict[str, dict] = json.loads(index_path.read_text())
        for video_id, entry in self.index.items():  # an index (it may come by `dvc pull`) names files in this folder only
            where = f"{index_path}: video {video_id!r}"
            if not isinstance(entry, dict):
                raise ValueError(f"{where}: expected an object")
            safe_name(entry.get("file"), f"{where}: field 'file'")
            digest = entry.get("digest")  # part of the features stage's cache file names
            if digest is not None and not (isinstance(digest, str) and re.fullmatch(r"[0-9a-f]{1,64}", digest)):
                raise ValueError(f"{where}: field 'digest' is {digest!r}, expected a hex digest")

    def __contains__(self, video_id: str) -> bool:
        return video_id in self.index

    def load(self, video_id: str, mmap: bool = False) -> np.ndarray:
        """uint8 [T, H, W, 3]; a damaged file is an error naming it (this folder is a stage output: it is
        restored or rebuilt, never silently recomputed by a reader)."""
        if video_id not in self.index:
            raise KeyError(f"{self.directory}: no frames for video {video_id!r}")
        path = self.directory / self.index[video_id]["file"]
        problem = None
        try:
            frames = load_frames(path, mmap=mmap)
        except Exception as exc:  # why, in the container's terms if it is damaged; else the decoder's words
            problem = frames_problem(path) or f"{type(exc).__name__}: {exc}"
        if problem is None:
            expected = self.index[video_id].get("num_frames")
            if frames.ndim == 4 and frames.shape[-1] == 3 and frames.dtype == np.uint8 and expected in (None, frames.shape[0]):
                return frames
            problem = f"holds {frames.dtype} {tuple(frames.shape)}, expected uint8 [{expected}, H, W, 3]"
        raise ValueError(f"{path}: frames of video {video_id!r} are damaged ({problem}); restore the frames output "
                         "with `dvc checkout data/frames`, or rebuild it with `dvc repro --force frames`")

    def shape(self, video_id: str) -> tuple[int, ...]:
        """uint8 [T, H, W, 3] shape of a video's frames without decoding them (index.json, else the file)."""
        shape = self.index[video_id].get("shape")
        return tuple(shape) if shape else tuple(self.load(video_id, mmap=True).shape)

    def times(self, video_id: str) -> list[float]:
        return self.index[video_id]["times"]

    def digest(self, video_id: str) -> str:
        """A content hash of the stored frames: caches downstream key on it, not on the id alone."""
        entry = self.index[video_id]
        return entry.get("digest") or stable_hash([entry["file"], entry["times"]])
