"""Stage `prompts`: frames (+ question context, never answers) -> data/prompts/<generator>.jsonl.

One row per video: event-level prompts (one sentence per event, time order, with frame spans) and
frame-level prompts (one sentence per sampled frame). Finished rows are kept in
data/.cache/prompts/<generator>/, so a killed or repeated run never asks twice. Videos whose prompts
could not be produced are listed in <generator>.failures.jsonl; the stage fails when there are more
than `prompts.max_failures` of them, and never fills a gap with other text.
"""
from __future__ import annotations

import sys
from pathlib import Path

from tqdm import tqdm

from cater.data.frames import FrameStore
from cater.data.schema import SPLITS, group_by_video, read_samples
from cater.io import RowStore, write_jsonl
from cater.prompts.base import PromptError, PromptRequest
from cater.prompts.registry import make_backend

SPLITS_DIR = Path("data/splits")
FRAMES = Path("data/frames")
OUT = Path("data/prompts")
CACHE = Path("data/.cache/prompts")


def build_requests(samples, frames: FrameStore) -> list[PromptRequest]:
    requests = []
    for video_id, group in sorted(group_by_video(samples).items()):
        requests.append(
            PromptRequest(
                video_id=video_id,
                frames=frames.load(video_id),
                frame_times=frames.times(video_id),
                questions=sorted({s.question for s in group}),
                events=group[0].events,
            )
        )
    return requests


def run(params, args) -> None:
    cfg = params["prompts"]
    name = args.generator
    if name not in cfg["generators"]:
        raise ValueError(f"params.yaml: prompts.generators has no entry {name!r} (have {sorted(cfg['generators'])})")
    gen_cfg = cfg["generators"][name]
    samples = [s for split in SPLITS for s in read_samples(SPLITS_DIR / f"{split}.jsonl")]
    frames = FrameStore(FRAMES)
    backend = make_backend(name, gen_cfg, CACHE / name / "responses")
    store = RowStore(CACHE / name / "rows", {"generator": gen_cfg, "num_frames": params["frames"]["num_frames"]})
    done = store.load()  # finished videos only: failed ones are retried on the next run
    errors: dict[str, str] = {}
    todo = [vid for vid in sorted(group_by_video(samples)) if vid not in done]
    batch_size = cfg["batch_size"]
    by_video = group_by_video(samples)
    for start in tqdm(range(0, len(todo), batch_size), desc=f"prompts[{name}]", unit="batch"):
        ids = todo[start : start + batch_size]
        requests = build_requests([s for vid in ids for s in by_video[vid]], frames)
        rows = []
        for request, result in zip(requests, backend.generate(requests)):
            if isinstance(result, PromptError):
                errors[request.video_id] = str(result)
                continue
            try:
                result.validate(len(request.frame_times))
            except PromptError as exc:
                errors[request.video_id] = f"invalid prompts: {exc}"
                continue
            rows.append({"key": request.video_id, **result.to_record()})
        store.append(rows)
        done.update({r["key"]: r for r in rows})
    ok = [done[v] for v in sorted(by_video) if v in done]
    failures = [{"video_id": v, "error": errors[v]} for v in sorted(errors)]
    write_jsonl(OUT / f"{name}.failures.jsonl", failures)
    if len(failures) > cfg["max_failures"]:
        raise RuntimeError(
            f"prompts[{name}]: {len(failures)} video(s) without prompts (max_failures {cfg['max_failures']}); "
            f"see {OUT / (name + '.failures.jsonl')}, first: {failures[0]['video_id']}: {failures[0]['error']}"
        )
    write_jsonl(OUT / f"{name}.jsonl", [{k: v for k, v in row.items() if k != "key"} for row in ok])
    print(f"prompts[{name}]: {len(ok)} videos, {len(failures)} failures -> {OUT / (name + '.jsonl')}")


def main(argv=None) -> int:
    from cater.stages.common import stage_main

    return stage_main(__doc__, run, lambda p: p.add_argument("--generator", required=True), argv=argv)


if __name__ == "__main__":
    sys.exit(main())
