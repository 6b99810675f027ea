"""Stage `features`: the frozen CLIP backbone (open_clip or transformers) over every frame and every text, once, in fp16.

Every prompt generator's and variant's strings are embedded here, so queued experiments that switch
prompt variants or generators never re-run this stage. Finished videos and text chunks are kept in
data/.cache/features/<config hash>/ so a killed run resumes.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from cater.data.frames import FrameStore, frame_stem
from cater.data.schema import SPLITS, read_samples
from cater.features import FeatureStoreWriter, qa_string, qa_subtitles_string
from cater.prompts.base import event_text_per_frame
from cater.io import (atomic_path, atomic_write_json, checkpoint_fingerprint, discard_corrupt, npy_problem, npz_problem,
                      read_jsonl, source_digest, stable_hash)
from cater.models.backbone import BackboneSpec, load_backbone

SPLITS_DIR = Path("data/splits")
FRAMES = Path("data/frames")
PROMPTS = Path("data/prompts")
OUT = Path("data/features")
CACHE = Path("data/.cache/features")


def _save_npy(path: Path, array: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:
            np.save(handle, array)


def collect_strings(samples, prompt_files: dict[str, Path], num_frames: int):
    """Deduplicated texts: the sample strings (pooled vectors) and the prompt strings (token vectors), the
    per-sample ids into the first list and the per-generator, per-video prompt ids into the second. Where the
    dataset carries subtitles (any sample's `subtitles` is set, even to an empty window), every sample also gets
    `qa_subtitles` (its qa strings followed by its subtitles; the qa strings themselves where it has none), so
    `train.choice_text: qa_subtitles` works whenever `dataset.subtitles` is set."""
    pooled: dict[str, int] = {}
    prompt: dict[str, int] = {}

    def sid(text: str) -> int:
        return pooled.setdefault(text, len(pooled))

    def pid(text: str) -> int:
        return prompt.setdefault(text, len(prompt))

    with_subtitles = any(s.subtitles is not None for s in samples)
    per_sample = {}
    for s in samples:
        per_sample[s.id] = {
            "question": sid(s.question),
            "qa": [sid(qa_string(s.question, c)) for c in s.choices],
            "answer": [sid(c) for c in s.choices],
        }
        if with_subtitles:
            per_sample[s.id]["qa_subtitles"] = [sid(qa_subtitles_string(s.question, c, s.subtitles)) for c in s.choices]
    prompts = {}
    for generator, path in sorted(prompt_files.items()):
        rows = {}
        for row in read_jsonl(path):
            if len(row["frames"]) != num_frames:
                raise ValueError(f"{path}: video {row['video_id']} has {len(row['frames'])} frame prompts, frames stage made {num_frames}")
            rows[row["video_id"]] = {
                "event": [pid(t) for t in event_text_per_frame(row["events"], num_frames)],
                "frame": [pid(t) for t in row["frames"]],
            }
        check_prompt_coverage(path, rows, samples)
        prompts[generator] = rows
    return list(pooled), list(prompt), per_sample, prompts


def check_prompt_coverage(path: Path, rows: dict, samples) -> None:
    """Every video of the splits has a row in the prompts file `path`, or is listed in its failures file
    (the prompts stage's own record of what it could not produce); anything else is a damaged or stale file."""
    failures_path = path.with_name(path.name[: -len(".jsonl")] + ".failures.json")
    failed = {row["video_id"] for row in json.loads(failures_path.read_text())} if failures_path.exists() else set()
    missing: dict[str, str] = {}
    for sample in samples:
        if sample.video_id not in rows and sample.video_id not in failed:
            missing.setdefault(sample.video_id, sample.split)
    if missing:
        first = ", ".join(f"{video} ({split})" for video, split in list(missing.items())[:5])
        raise ValueError(f"{path}: no prompts for {len(missing)} video(s) of the splits, and {failures_path.name} does not "
                         f"list them (first: {first}); the file is stale or damaged: re-run the prompts stage")


def check_text_lengths(backbone, pooled: list[str], prompt: list[str], per_sample: dict, prompts: dict,
                       truncate: bool) -> list[int]:
    """Texts longer than the text encoder's context would be cut silently by the tokenizer: an error naming
    the first such sample (or video) and field, unless `features.truncate_text` accepts the cut (then counted).
    Returns the prompt strings' token counts (capped at the context)."""
    limit = backbone.context_length
    long_pooled = {i for i, n in enumerate(backbone.token_lengths(pooled)) if n > limit}
    # qa_subtitles strings end with the subtitles so that the context cuts them there, by design (counted only)
    cut_by_design = {i for ids in per_sample.values() for i in ids.get("qa_subtitles", ())} - {
        i for ids in per_sample.values() for name in ("question", "qa", "answer")
        for i in (ids[name] if isinstance(ids[name], list) else [ids[name]])}
    if long_pooled & cut_by_design:
        print(f"features: {len(long_pooled & cut_by_design)} of {len(cut_by_design)} qa + subtitles text(s) are cut at the "
              f"text encoder's {limit} tokens (the subtitles' tail; the question and choice are kept)")
    long_pooled -= cut_by_design
    prompt_lengths = backbone.token_lengths(prompt)
    long_prompt = {i for i, n in enumerate(prompt_lengths) if n > limit}
    capped = [min(n, limit) for n in prompt_lengths]
    count = len(long_pooled) + len(long_prompt)
    if not count:
        return capped
    if truncate:
        print(f"features: {count} text(s) exceed the text encoder's {limit} tokens and are truncated (features.truncate_text)")
        return capped

    def first_use() -> str:
        for sample_id, ids in per_sample.items():
            for name in ("question", "qa", "answer"):
                values = ids[name] if isinstance(ids[name], list) else [ids[name]]
                for position, value in enumerate(values):
                    if value in long_pooled:
                        where = {"question": "field 'question'", "qa": f"choice {position} as \"question answer: choice\"",
                                 "answer": f"field 'choices'[{position}]"}[name]
                        return f"sample {sample_id!r}, {where}"
        for generator, rows in prompts.items():
            for video_id, row in rows.items():
                for kind in ("event", "frame"):
                    if any(value in long_prompt for value in row[kind]):
                        return f"data/prompts/{generator}.jsonl, video {video_id!r}, its {kind} prompts"
        return "?"

    texts = [pooled[i] for i in long_pooled] + [prompt[i] for i in long_prompt]
    longest = max(texts, key=len)
    raise ValueError(f"{count} text(s) exceed the text encoder's {limit} tokens and would be truncated silently; first: "
                     f"{first_use()}; longest: {longest[:120]!r}... Shorten them, or set features.truncate_text: true")


def cache_key(spec: BackboneSpec, architecture: dict, frame_size: int, num_frames: int) -> str:
    """Cached features are reused only for the same backbone: its library, name, seed, config and weights."""
    return stable_hash({"backbone": spec.__dict__, "architecture": architecture, "frames": frame_size, "num_frames": num_frames,
                        "code": source_digest("cater.models.backbone"),
                        "weights": checkpoint_fingerprint(spec.pretrained) if spec.pretrained and spec.pretrained != "openai" else None})


def check_pretrained(cfg: dict, source: str = "params.yaml") -> None:
    """A local checkpoint path is written into data/features/index.json and the train stage rebuilds the backbone
    from it: it must be relative to the repository, or every output would be machine-specific."""
    pretrained = cfg.get("pretrained")
    if pretrained and os.path.isabs(pretrained):
        raise ValueError(f"{source}: features.pretrained is the machine path {pretrained!r}; link the checkpoint into the "
                         f"repository (ln -s {pretrained} models/{Path(pretrained).name}) and name it relative to it "
                         f"(models/{Path(pretrained).name}), so data/features and dvc.lock stay the same on every machine")


def run(params, args) -> None:
    cfg = params["features"]
    check_pretrained(cfg)
    samples = [s for split in SPLITS for s in read_samples(SPLITS_DIR / f"{split}.jsonl")]
    frames = FrameStore(FRAMES)
    num_frames = params["frames"]["num_frames"]
    # the generators params declare (a removed generator's old file may still lie in data/prompts)
    prompt_files = {name: PROMPTS / f"{name}.jsonl" for name in sorted(params["prompts"]["generators"])}
    pooled_strings, prompt_strings, per_sample, prompts = collect_strings(samples, prompt_files, num_frames)
    spec = BackboneSpec(cfg["backbone"], cfg["pretrained"], cfg["seed"], cfg.get("library", "open_clip"))
    device = "cuda" if cfg["device"] == "auto" and torch.cuda.is_available() else ("cpu" if cfg["device"] == "auto" else cfg["device"])
    backbone = load_backbone(spec, device=device)
    prompt_lengths = check_text_lengths(backbone, pooled_strings, prompt_strings, per_sample, prompts,
                                        truncate=cfg.get("truncate_text", False))
    cache = CACHE / cache_key(spec, backbone.architecture(), params["frames"]["size"], num_frames)
    for part in ("video", "pooled", "prompt"):
        (cache / part).mkdir(parents=True, exist_ok=True)

    # 1. every video's tokens, one cached .npy per video (resumable); ids whose frames are one stored file (the
    # frames stage's aliases) share one row
    all_ids = sorted({s.video_id for s in samples})
    first_of_file: dict[str, str] = {}
    aliases = {v: first_of_file.setdefault(frames.index[v]["file"], v) for v in all_ids}
    aliases = {v: first for v, first in aliases.items() if v != first}
    video_ids = [v for v in all_ids if v not in aliases]
    cached = {v: cache / "video" / f"{frame_stem(v)}-{frames.digest(v)}.npy" for v in video_ids}
    todo = [v for v in video_ids if not discard_corrupt(cached[v], npy_problem)]
    per_batch = max(1, cfg["batch_size"] // num_frames)
    for start in tqdm(range(0, len(todo), per_batch), desc="features[video]", unit="batch"):
        batch = todo[start : start + per_batch]
        images = np.concatenate([frames.load(v) for v in batch])
        cls, patches = backbone.frame_features(images)
        tokens = torch.cat([cls[:, None], patches], dim=1).half().cpu().numpy()  # [B*T, 1+P, D]
        for i, vid in enumerate(batch):
            _save_npy(cached[vid], tokens[i * num_frames : (i + 1) * num_frames])

    # 2. text in chunks, one cached .npz per chunk (resumable): pooled vectors, and prompt token vectors
    chunk = cfg["text_chunk"]
    pooled_chunks = [_text_chunk(backbone, cache / "pooled", pooled_strings[i : i + chunk], tokens=False)
                     for i in tqdm(range(0, len(pooled_strings), chunk), desc="features[text]", unit="chunk")]
    prompt_chunks = [_text_chunk(backbone, cache / "prompt", prompt_strings[i : i + chunk], tokens=True)
                     for i in tqdm(range(0, len(prompt_strings), chunk), desc="features[prompts]", unit="chunk")]
    token_length = max(prompt_lengths, default=1)
    _assemble(cached, video_ids, pooled_chunks, prompt_chunks, token_length, backbone.embed_dim,
              {"pooled": pooled_strings, "prompts": prompt_strings}, per_sample, prompts, spec, num_frames, aliases)


def _text_chunk(backbone, folder: Path, part: list[str], tokens: bool) -> Path:
    path = folder / f"{stable_hash(part)}.npz"
    if not discard_corrupt(path, npz_problem):
        pooled, token_vectors, lengths = backbone.text_features(part)
        arrays = {"pooled": pooled.half().cpu().numpy()}
        if tokens:  # only as long as this chunk's longest string
            width = int(lengths.max())
            arrays = {"tokens": token_vectors[:, :width].half().cpu().numpy(), "lengths": lengths.cpu().numpy()}
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as handle:
                np.savez(handle, **arrays)
    return path


def _assemble(cached, video_ids, pooled_chunks, prompt_chunks, token_length, embed_dim, strings, per_sample, prompts,
              spec, num_frames, aliases: dict[str, str] | None = None) -> None:
    """The sharded store (cater.features), written into a temporary folder shard by shard, then renamed."""
    import shutil

    tmp = OUT.with_name(OUT.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    store = FeatureStoreWriter(tmp)
    for vid in video_ids:
        store.add_video(np.load(cached[vid])[None])
    for path in pooled_chunks:
        with np.load(path) as part:
            store.add_pooled(part["pooled"])
    for path in prompt_chunks:
        with np.load(path) as part:
            store.add_prompt_tokens(part["tokens"], part["lengths"], token_length)
    extra = {"video_aliases": aliases} if aliases else {}  # absent when no two ids share frames
    store.close(backbone=spec.__dict__, num_frames=num_frames, embed_dim=embed_dim, token_length=token_length,
                video_ids=video_ids, samples=per_sample, prompts=prompts, **extra)
    atomic_write_json(tmp / "strings.json", strings)
    shutil.rmtree(OUT, ignore_errors=True)
    tmp.rename(OUT)
    print(f"features: {len(video_ids)} videos, {len(strings['pooled'])} sample strings, {len(strings['prompts'])} prompt "
          f"strings (up to {token_length} tokens), backbone {spec.name} -> {OUT}")


def main(argv=None) -> int:
    from cater.stages.common import stage_main

    return stage_main(__doc__, run, argv=argv, sections=('frames', 'prompts', 'features'))


if __name__ == "__main__":
    sys.exit(main())
