"""`shapes`: the embedded demo dataset, generated deterministically from a seed.

Each clip is a real H.264 mp4 in which 2-6 coloured shapes appear one after another, move in a
direction (or stay still) and disappear. Every video gets four multiple-choice questions, one per
type, each with 5 options; answering needs the video's content and its temporal order:

    first      which shape appeared first?
    direction  which direction did the <shape> move?
    after      what appeared right after the <shape>?
    count      how many shapes appeared?

So that no trivial rule scores above chance: within each split and question type the correct
option's position is balanced over A-E, and so are the object count (2-6) and the direction asked
about (4 directions and "it stayed still"): each is a seeded shuffle of equal counts, exact when
the split's video count is a multiple of 5. So every option text of the count and direction
questions is the correct answer equally often.
"""
from __future__ import annotations

import random
from pathlib import Path

import numpy as np

from cater.data.schema import Sample
from cater.sections import MAX_OBJECTS, ShapesConfig  # dataset.shapes, typed with the other params sections

COLORS = {"red": (220, 40, 40), "green": (40, 190, 60), "blue": (50, 80, 230), "yellow": (230, 210, 40)}
SHAPES = ("circle", "square", "triangle")
DIRECTIONS = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1), "nowhere": (0, 0)}
DIRECTION_CHOICES = ("left", "right", "up", "down", "it stayed still")
COUNT_WORDS = ("two", "three", "four", "five", "six")  # the answer for 2..6 objects
QUESTION_TYPES = ("first", "direction", "after", "count")


assert len(COUNT_WORDS) + 1 == MAX_OBJECTS  # ShapesConfig (cater.sections) allows up to MAX_OBJECTS objects


def _object_name(obj: dict) -> str:
    return f"{obj['color']} {obj['shape']}"


def make_events(rng: random.Random, cfg: ShapesConfig, n: int | None = None) -> list[dict]:
    """`n` objects (default: random) with distinct identities, staggered appearance times, a direction and a start point."""
    n = rng.randint(cfg.min_objects, cfg.max_objects) if n is None else n
    identities = rng.sample([(c, s) for c in COLORS for s in SHAPES], n)
    slot = cfg.seconds / n
    events = []
    for i, (color, shape) in enumerate(identities):
        start = round(i * slot + rng.uniform(0.0, 0.2 * slot), 3)
        duration = rng.uniform(0.9, 1.4) * max(slot, 0.9)
        end = round(min(cfg.seconds, start + duration), 3)
        direction = rng.choice(list(DIRECTIONS))  # uniform over the 5 answers, "it stayed still" included
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


def _choices_with_answer(rng: random.Random, answer: str, pool: list[str], position: int, k: int = 5) -> list[str]:
    """`k` options: `answer` at `position`, the rest drawn from `pool` in shuffled order."""
    distractors = [p for p in dict.fromkeys(pool) if p != answer]
    if len(distractors) < k - 1:
        raise ValueError(f"need {k - 1} distractors for {answer!r}, got {len(distractors)}")
    rng.shuffle(distractors)
    choices = distractors[: k - 1]
    choices.insert(position, answer)
    return choices


def balanced(rng: random.Random, values: list, count: int) -> list:
    """`count` draws in which every value occurs equally often (to within one), in seeded order."""
    drawn = [values[i % len(values)] for i in range(count)]
    rng.shuffle(drawn)
    return drawn


def make_questions(rng: random.Random, events: list[dict], positions: dict[str, int], direction: str) -> list[tuple[str, str, list[str], int]]:
    """(question_type, question, choices, answer_idx) for one video; `positions[type]` is the answer's index.
    The object the direction question asks about is given `direction` (so the split's answers are balanced)."""
    names = [_object_name(e) for e in events]
    all_names = [f"{c} {s}" for c in COLORS for s in SHAPES]

    def object_pool(exclude: list[str]) -> list[str]:
        """Distractors: the video's other objects first (hard negatives), then unseen objects."""
        others = [n for n in names if n not in exclude]
        unseen = [n for n in all_names if n not in names]
        rng.shuffle(others)
        rng.shuffle(unseen)
        return (others + unseen)[:4]

    def ask(qtype: str, question: str, answer: str, pool: list[str]) -> tuple[str, str, list[str], int]:
        choices = _choices_with_answer(rng, answer, pool, positions[qtype])
        return qtype, question, choices, positions[qtype]

    target = rng.choice(events)
    target["direction"] = direction
    direction = "it stayed still" if direction == "nowhere" else direction
    i = rng.randrange(len(events) - 1)
    return [
        ask("first", "Which shape appeared first?", names[0], object_pool([names[0]])),
        ask("direction", f"Which direction did the {_object_name(target)} move?", direction, list(DIRECTION_CHOICES)),
        ask("after", f"What appeared right after the {names[i]}?", names[i + 1], object_pool([names[i], names[i + 1]])),
        ask("count", "How many shapes appeared?", COUNT_WORDS[len(events) - 2], list(COUNT_WORDS)),
    ]


def generate(out_dir: str | Path, cfg: ShapesConfig) -> list[Sample]:
    """Write the videos under `out_dir/videos/` and return the samples (paths relative to cwd)."""
    out_dir = Path(out_dir)
    samples: list[Sample] = []
    rng = random.Random(cfg.seed)
    for split, count in cfg.videos.items():
        positions = {qtype: balanced(rng, list(range(5)), count) for qtype in QUESTION_TYPES}
        object_counts = balanced(rng, list(range(cfg.min_objects, cfg.max_objects + 1)), count)
        directions = balanced(rng, list(DIRECTIONS), count)
        for v in range(count):
            video_id = f"shapes-{split}-{v:04d}"
            events = make_events(rng, cfg, object_counts[v])
            questions = make_questions(rng, events, {t: p[v] for t, p in positions.items()}, directions[v])
            path = out_dir / "videos" / f"{video_id}.mp4"
            write_video(path, events, cfg)
            for qtype, question, choices, answer_idx in questions:
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
