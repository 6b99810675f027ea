"""Stage `prompts`: frames (+ question context, never answers) -> data/prompts/<generator>.jsonl.

One row per video: event-level prompts (one sentence per event, time order, with frame spans) and
frame-level prompts (one sentence per sampled frame). Finished rows are kept in
data/.cache/prompts/<generator>/, so a killed or repeated run never asks twice. Videos whose prompts
could not be produced are listed in <generator>.failures.json (a JSON list, `[]` when none); the stage fails when there are more
than `prompts.max_failures` of them, and never fills a gap with other text.

Backends that can estimate their cost (openai) print it before the first request: requests, images,
input and output tokens, and dollars when the generator sets `usd_per_1m_input_tokens` and
`usd_per_1m_output_tokens`. Settings that only change how requests are sent (timeouts, retries,
concurrency, the key's variable) do not enter the rows' config hash (`registry.RUNTIME_KEYS`).
Each call to the backend gets `batch_size` videos; the openai backend runs up to `concurrency` of
them at once, so `batch_size` should be a few times `concurrency`.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from tqdm import tqdm

from cater.data.frames import FrameStore
from cater.data.schema import SPLITS, group_by_video, read_samples
from cater.io import RowStore, atomic_write_json, safe_name, source_digest, stable_hash, write_jsonl
from cater.prompts.base import PromptError, PromptRequest
from cater.prompts.registry import BACKEND_MODULES, make_backend, result_config

SPLITS_DIR = Path("data/splits")
FRAMES = Path("data/frames")
OUT = Path("data/prompts")
CACHE = Path("data/.cache/prompts")


def request_digest(group, frames: FrameStore) -> str:
    """What a video's prompts depend on: its frames, their times, its questions and events."""
    video_id = group[0].video_id
    parts = [frames.digest(video_id), frames.times(video_id), sorted({s.question for s in group}), group[0].events]
    if group[0].given_prompts is not None:
        parts.append(group[0].given_prompts)
    if group[0].subtitles:
        parts.append({"subtitles": group[0].subtitles})
    return stable_hash(parts)


def build_requests(samples, frames: FrameStore, shapes_only: bool = False) -> list[PromptRequest]:
    """One request per video; with `shapes_only` the frames are zero-byte stand-ins of the right shape
    (all the cost estimate reads), so estimating a whole dataset decodes nothing."""
    requests = []
    for video_id, group in sorted(group_by_video(samples).items()):
        pixels = np.broadcast_to(np.uint8(0), frames.shape(video_id)) if shapes_only else frames.load(video_id)
        requests.append(
            PromptRequest(
                video_id=video_id,
                frames=pixels,
                frame_times=frames.times(video_id),
                questions=sorted({s.question for s in group}),
                events=group[0].events,
                given_prompts=group[0].given_prompts,
                subtitles=group[0].subtitles,
            )
        )
    return requests


def run(params, args) -> None:
    cfg = params["prompts"]
    name = safe_name(args.generator, "--generator")  # it names data/prompts/<name>.jsonl and its cache folder
    if name not in cfg["generators"]:
        raise ValueError(f"params.yaml: prompts.generators has no entry {name!r} (have {sorted(cfg['generators'])})")
    gen_cfg = cfg["generators"][name]
    samples = [s for split in SPLITS for s in read_samples(SPLITS_DIR / f"{split}.jsonl")]
    if gen_cfg.get("backend") == "annotations" and not any(s.events for s in samples):
        raise ValueError(
            f"prompts[{name}]: the annotations backend reads ground-truth events, and these samples have no event "
            "annotations (only the shapes demo has them); use an openai or hf generator (README: Event prompts)"
        )
    if gen_cfg.get("backend") == "given" and not any(s.given_prompts for s in samples):
        raise ValueError(
            f"prompts[{name}]: the given backend reads the prompts shipped with the dataset (dataset.name: seed_jsonl "
            "rows with event_prompts), and these samples have none; use an openai or hf generator"
        )
    frames = FrameStore(FRAMES)
    backend = make_backend(name, gen_cfg, CACHE / name / "responses")
    config = {"generator": result_config(gen_cfg), "num_frames": params["frames"]["num_frames"],
              "code": source_digest("cater.prompts.base", f"cater.prompts.{BACKEND_MODULES.get(gen_cfg.get('backend'), 'base')}")}
    store = RowStore(CACHE / name / "rows", config)
    by_video = group_by_video(samples)
    digests = {vid: request_digest(group, frames) for vid, group in by_video.items()}
    # finished videos whose inputs are unchanged; failed ones are retried on the next run
    done = store.load(accept=lambda row: row.get("input") == digests.get(row["key"]))
    errors: dict[str, str] = {}
    todo = [vid for vid in sorted(by_video) if vid not in done]
    batch_size = cfg["batch_size"]
    if todo and hasattr(backend, "estimate"):  # what the run may cost, before any request
        estimate = backend.estimate(build_requests([s for v in todo for s in by_video[v]], frames, shapes_only=True))
        print(f"prompts[{name}]: {len(done)} videos done, {len(todo)} to do: {estimate}", flush=True)
    if todo and getattr(backend, "batch", False):  # the Batch API: every request submitted, then the answers collected
        chunks = (build_requests([s for vid in todo[i : i + batch_size] for s in by_video[vid]], frames)
                  for i in range(0, len(todo), batch_size))
        backend.prefetch(chunks, echo=lambda message: print(f"prompts[{name}]: {message}", flush=True))
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
            rows.append({"key": request.video_id, "input": digests[request.video_id], **result.to_record()})
        store.append(rows)
        done.update({r["key"]: r for r in rows})
    ok = [done[v] for v in sorted(by_video) if v in done]
    failures = [{"video_id": v, "error": errors[v]} for v in sorted(errors)]
    atomic_write_json(OUT / f"{name}.failures.json", failures)  # never empty, so DVC has nothing to warn about
    if len(failures) > cfg["max_failures"]:
        raise RuntimeError(
            f"prompts[{name}]: {len(failures)} video(s) without prompts (max_failures {cfg['max_failures']}); "
            f"see {OUT / (name + '.failures.json')}, first: {failures[0]['video_id']}: {failures[0]['error']}"
        )
    write_jsonl(OUT / f"{name}.jsonl", [{k: v for k, v in row.items() if k not in ("key", "input")} for row in ok])
    sent = f", {backend.requests_sent} request(s) sent" if hasattr(backend, "requests_sent") else ""
    print(f"prompts[{name}]: {len(ok)} videos, {len(failures)} failures{sent} -> {OUT / (name + '.jsonl')}")


def main(argv=None) -> int:
    from cater.stages.common import stage_main

    return stage_main(__doc__, run, lambda p: p.add_argument("--generator", required=True), argv=argv, sections=("frames", "prompts"))


if __name__ == "__main__":
    sys.exit(main())
