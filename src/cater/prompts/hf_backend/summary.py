"""The fixed visual summary a text-only LM rewrites when no `summary_from` is given: one deterministic sentence
per sampled frame from its pixels (brightness, the background colour, up to two other colours with where they
are and where they moved, how much the frame changed)."""
from __future__ import annotations

import numpy as np

PALETTE = {
    "black": (0, 0, 0), "gray": (128, 128, 128), "white": (250, 250, 250), "red": (220, 40, 40),
    "orange": (240, 140, 30), "yellow": (230, 210, 40), "green": (40, 190, 60), "cyan": (40, 200, 210),
    "blue": (50, 80, 230), "purple": (140, 60, 180), "brown": (130, 80, 40), "pink": (240, 130, 180),
}
_NAMES = list(PALETTE)
_RGB = np.array([PALETTE[n] for n in _NAMES], dtype=np.float32)


def _colour_map(frame: np.ndarray) -> np.ndarray:
    """Nearest palette index per pixel of a frame subsampled to at most ~64 px a side."""
    step = max(1, max(frame.shape[:2]) // 64)
    small = frame[::step, ::step].astype(np.float32)
    distances = ((small[:, :, None, :] - _RGB[None, None]) ** 2).sum(-1)
    return distances.argmin(-1)


def _where(x: float, y: float) -> str:
    row = "top" if y < 1 / 3 else "bottom" if y > 2 / 3 else "middle"
    col = "left" if x < 1 / 3 else "right" if x > 2 / 3 else "centre"
    return "centre" if (row, col) == ("middle", "centre") else f"{row} {col}" if row != "middle" else f"middle {col}"


def _blobs(labels: np.ndarray, background: int) -> dict[str, tuple[float, float]]:
    """Up to two non-background colours covering >= 1% of the frame -> their centroid (x, y) in [0, 1]."""
    h, w = labels.shape
    counts = np.bincount(labels.ravel(), minlength=len(_NAMES))
    counts[background] = 0
    found = {}
    for index in np.argsort(-counts, kind="stable")[:2]:
        if counts[index] < 0.01 * h * w:
            break
        ys, xs = np.nonzero(labels == index)
        found[_NAMES[index]] = ((xs.mean() + 0.5) / w, (ys.mean() + 0.5) / h)
    return found


def _moved(before: tuple[float, float], after: tuple[float, float]) -> str | None:
    dx, dy = after[0] - before[0], after[1] - before[1]
    if max(abs(dx), abs(dy)) < 0.05:
        return None
    if abs(dx) >= abs(dy):
        return "moved right" if dx > 0 else "moved left"
    return "moved down" if dy > 0 else "moved up"


def visual_summary(frames: np.ndarray, times: list[float]) -> list[str]:
    """One deterministic sentence per frame from its pixels (brightness, colours, places, motion)."""
    sentences = []
    previous_blobs: dict[str, tuple[float, float]] = {}
    previous = None
    for i, (frame, t) in enumerate(zip(frames, times)):
        labels = _colour_map(frame)
        background = int(np.bincount(labels.ravel(), minlength=len(_NAMES)).argmax())
        luma = float((frame.astype(np.float32) @ np.array([0.299, 0.587, 0.114], dtype=np.float32)).mean())
        light = "dark" if luma < 60 else "dim" if luma < 120 else "bright" if luma < 190 else "very bright"
        blobs = _blobs(labels, background)
        parts = []
        for name, (x, y) in blobs.items():
            motion = _moved(previous_blobs[name], (x, y)) if name in previous_blobs else None
            parts.append(f"{name} at the {_where(x, y)}" + (f" ({motion})" if motion else ""))
        text = f"Frame {i + 1} at {t:.2f} s: {light}, mostly {_NAMES[background]}"
        text += "; " + ", ".join(parts) if parts else "; nothing else visible"
        if previous is not None:
            change = float(np.abs(frame.astype(np.int16) - previous.astype(np.int16)).mean()) / 255
            text += "; " + ("no visible change" if change < 0.005 else "small change" if change < 0.05 else "large change")
        sentences.append(text + ".")
        previous_blobs, previous = blobs, frame
    return sentences
