"""`shapes`: the embedded demo dataset, generated deterministically from a seed.

Each clip is a real H.264 mp4 in which 2-5 coloured shapes appear one after another, move in a
direction (or stay still) and disappear. Every video gets four multiple-choice questions, one per
type, each with 5 options; answering needs the video's content and its temporal order:

    first      which shape appeared first?
    direction  which direction did the <shape> move?
    after      what appeared right after the <shape>?
    count      how many shapes appeared?
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cater.data.schema import Sample

COLORS = {"red": (220, 40, 40), "green": (40, 190, 60), "blue": (50, 80, 230), "yellow": (230, 210, 40)}
SHAPES = ("circle", "square", "triangle")
DIRECTIONS = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1), "nowhere": (0, 0)}
DIRECTION_CHOICES = ("left", "right", "up", "down", "it stayed still")
COUNT_WORDS = ("one", "two", "three", "four", "five")
QUESTION_TYPES = ("first", "direction", "after", "count")


@dataclass
class ShapesConfig:
    seed: int = 0
    videos: dict | None = None  # {"train": 150, "val": 38, "test": 38}
    size: int = 64
    fps: int = 8
    seconds: float = 4.0
    min_objects: int = 2
    max_objects: int = 5

    def __post_init__(self) -> None:
        if self.videos is None:
            self.videos = {"train": 150, "val": 38, "test": 38}


def _object_name(obj: dict) -> str:
    return f"{obj['color']} {obj['shape']}"


def make_events(rng: random.Random, cfg: ShapesConfig) -> list[dict]:
    """Objects with distinct identities, staggered appearance times, a direction and a start point."""
    n = rng.randint(cfg.min_objects, cfg.max_objects)
    identities = rng.sample([(c, s) for c in COLORS for s in SHAPES], n)
    slot = cfg.seconds / n
    events = []
    for i, (color, shape) in enumerate(identities):
        start = round(i * slot + rng.uniform(0.0, 0.2 * slot), 3)
        duration = rng.uniform(0.9, 1.4) * max(slot, 0.9)
        end = round(min(cfg.seconds, start + duration), 3)
        direction = rng.choice(list(DIRECTIONS)) if rng.random() < 0.85 else "nowhere"
        events.append(
            {
                "label": f"{color} {shape}",
                "color": color,
                "shape": shape,
                "direction": direction,
                "start": start,
                "end": end,
                "x0": round(rng.uniform(0.3, 0.7), 3),
                "y0": round(rng.uniform(0.3, 0.7), 3),
            }
        )
    return events


def object_position(event: dict, t: float, cfg: ShapesConfig) -> tuple[float, float]:
    """Centre in [0, 1] coordinates at time t: the object crosses ~45% of the frame while visible."""
    dx, dy = DIRECTIONS[event["direction"]]
    progress = (t - event["start"]) / max(event["end"] - event["start"], 1e-6) - 0.5
    return event["x0"] + 0.45 * dx * progress, event["y0"] + 0.45 * dy * progress


def visible(event: dict, t: float) -> bool:
    return event["start"] <= t < event["end"]


def render_frame(events: list[dict], t: float, cfg: ShapesConfig) -> np.ndarray:
    size = cfg.size
    frame = np.full((size, size, 3), 24, dtype=np.uint8)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    radius = size * 0.11
    for event in events:
        if not visible(event, t):
            continue
        cx, cy = (c * size for c in object_position(event, t, cfg))
        if event["shape"] == "circle":
            mask = (xx - cx) ** 2 + (yy - cy) ** 2 <= radius**2
        elif event["shape"] == "square":
            mask = (np.abs(xx - cx) <= radius * 0.9) & (np.abs(yy - cy) <= radius * 0.9)
        else:  # upward triangle
            top, bottom = cy - radius, cy + radius
            half_width = (yy - top) / (2 * radius) * radius * 1.1
            mask = (yy >= top) & (yy <= bottom) & (np.abs(xx - cx) <= half_width)
        frame[mask] = COLORS[event["color"]]
    return frame


def write_video(path: Path, events: list[dict], cfg: ShapesConfig) -> None:
    """Encode with libx264, one thread, constant QP, so the bytes are identical on every run.

    Constant QP, not CRF: CRF's floating-point rate control gave different bytes once torch's CPU
    kernels had run in the same process.
    """
    import av

    n_frames = int(round(cfg.seconds * cfg.fps))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.mp4")
    with av.open(str(tmp), mode="w", options={"fflags": "+bitexact"}) as container:
        stream = container.add_stream("libx264", rate=cfg.fps)
        stream.width = stream.height = cfg.size
        stream.pix_fmt = "yuv420p"
        stream.codec_context.options = {"qp": "18", "preset": "veryfast", "threads": "1", "flags": "+bitexact"}
        stream.codec_context.thread_count = 1
        for i in range(n_frames):
            image = render_frame(events, (i + 0.5) / cfg.fps, cfg)
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    tmp.replace(path)


def _choices_with_answer(rng: random.Random, answer: str, pool: list[str], k: int = 5) -> tuple[list[str], int]:
    distractors = [p for p in dict.fromkeys(pool) if p != answer]
    rng.shuffle(distractors)
    choices = distractors[: k - 1] + [answer]
    rng.shuffle(choices)
    return choices, choices.index(answer)


def make_questions(rng: random.Random, events: list[dict]) -> list[tuple[str, str, list[str], int]]:
    """(question_type, question, choices, answer_idx) for one video."""
    names = [_object_name(e) for e in events]
    all_names = [f"{c} {s}" for c in COLORS for s in SHAPES]
    # distractors: the video's other objects first (hard negatives), then unseen objects
    def object_pool(exclude: str) -> list[str]:
        others = [n for n in names if n != exclude]
        unseen = [n for n in all_names if n not in names]
        rng.shuffle(unseen)
        return others + unseen

    questions = []
    choices, idx = _choices_with_answer(rng, names[0], object_pool(names[0])[:4])
    questions.append(("first", "Which shape appeared first?", choices, idx))

    target = rng.choice(events)
    answer = "it stayed still" if target["direction"] == "nowhere" else target["direction"]
    choices = list(DIRECTION_CHOICES)
    rng.shuffle(choices)
    questions.append(("direction", f"Which direction did the {_object_name(target)} move?", choices, choices.index(answer)))

    i = rng.randrange(len(events) - 1)
    nxt = names[i + 1]
    pool = [n for n in object_pool(nxt) if n != names[i]][:4]
    choices, idx = _choices_with_answer(rng, nxt, pool)
    questions.append(("after", f"What appeared right after the {names[i]}?", choices, idx))

    choices = list(COUNT_WORDS)
    questions.append(("count", "How many shapes appeared?", choices, len(events) - 1))
    return questions


def generate(out_dir: str | Path, cfg: ShapesConfig) -> list[Sample]:
    """Write the videos under `out_dir/videos/` and return the samples (paths relative to cwd)."""
    out_dir = Path(out_dir)
    samples: list[Sample] = []
    rng = random.Random(cfg.seed)
    for split, count in cfg.videos.items():
        for v in range(count):
            video_id = f"shapes-{split}-{v:04d}"
            events = make_events(rng, cfg)
            path = out_dir / "videos" / f"{video_id}.mp4"
            write_video(path, events, cfg)
            for qtype, question, choices, answer_idx in make_questions(rng, events):
                samples.append(
                    Sample(
                        id=f"{video_id}-{qtype}",
                        dataset="shapes",
                        split=split,
                        video=str(path),
                        video_id=video_id,
                        question=question,
                        choices=choices,
                        answer_idx=answer_idx,
                        question_type=qtype,
                        events=events,
                    )
                )
    return samples


def position_words(x: float, y: float) -> str:
    col = "left" if x < 0.4 else "right" if x > 0.6 else "centre"
    row = "top" if y < 0.4 else "bottom" if y > 0.6 else "middle"
    if row == "middle" and col == "centre":
        return "in the centre"
    if row == "middle":
        return f"on the {col}"
    if col == "centre":
        return f"at the {row}"
    return f"at the {row} {col}"


__all__ = ["QUESTION_TYPES", "ShapesConfig", "generate", "object_position", "position_words", "visible"]
