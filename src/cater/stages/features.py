"""Stage `features`: the frozen open_clip backbone over every frame and every text, once, in fp16.

Every prompt generator's and variant's strings are embedded here, so queued experiments that switch
prompt variants or generators never re-run this stage. Finished videos and text chunks are kept in
data/.cache/features/<config hash>/ so a killed run resumes.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file
from tqdm import tqdm

from cater.data.frames import FrameStore, frame_stem
from cater.data.schema import SPLITS, read_samples
from cater.features import event_text_per_frame, qa_string
from cater.io import (atomic_path, atomic_write_json, checkpoint_fingerprint, discard_corrupt, npy_problem, npz_problem,
                      read_jsonl, stable_hash)
from cater.models.backbone import BackboneSpec, FrozenBackbone

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
    strings: dict[str, int] = {}

    def sid(text: str) -> int:
        return strings.setdefault(text, len(strings))

    per_sample = {}
    for s in samples:
        per_sample[s.id] = {
            "question": sid(s.question),
            "qa": [sid(qa_string(s.question, c)) for c in s.choices],
            "answer": [sid(c) for c in s.choices],
        }
    prompts = {}
    for generator, path in sorted(prompt_files.items()):
        rows = {}
        for row in read_jsonl(path):
            if len(row["frames"]) != num_frames:
                raise ValueError(f"{path}: video {row['video_id']} has {len(row['frames'])} frame prompts, frames stage made {num_frames}")
            rows[row["video_id"]] = {
                "event": [sid(t) for t in event_text_per_frame(row["events"], num_frames)],
                "frame": [sid(t) for t in row["frames"]],
            }
        check_prompt_coverage(path, rows, samples)
        prompts[generator] = rows
    return list(strings), per_sample, prompts


def check_prompt_coverage(path: Path, rows: dict, samples) -> None:
    """Every video of the splits has a row in the prompts file `path`, or is listed in its failures file
    (the prompts stage's own record of what it could not produce); anything else is a damaged or stale file."""
    failures_path = path.with_name(path.name[: -len(".jsonl")] + ".failures.jsonl")
    failed = {row["video_id"] for row in read_jsonl(failures_path)} if failures_path.exists() else set()
    missing: dict[str, str] = {}
    for sample in samples:
        if sample.video_id not in rows and sample.video_id not in failed:
            missing.setdefault(sample.video_id, sample.split)
    if missing:
        first = ", ".join(f"{video} ({split})" for video, split in list(missing.items())[:5])
        raise ValueError(f"{path}: no prompts for {len(missing)} video(s) of the splits, and {failures_path.name} does not "
                         f"list them (first: {first}); the file is stale or damaged: re-run the prompts stage")


def check_text_lengths(backbone, strings: list[str], per_sample: dict, prompts: dict, truncate: bool) -> int:
    """Texts longer than the text encoder's context would be cut silently by the tokenizer: an error naming
    the first such sample (or video) and field, unless `features.truncate_text` accepts the cut (then counted)."""
    limit = backbone.context_length
    long_ids = {i for i, n in enumerate(backbone.token_lengths(strings)) if n > limit}
    if not long_ids:
        return 0
    if truncate:
        print(f"features: {len(long_ids)} text(s) exceed the text encoder's {limit} tokens and are truncated (features.truncate_text)")
        return len(long_ids)

    def first_use() -> str:
        for sample_id, ids in per_sample.items():
            for field in ("question", "qa", "answer"):
                values = ids[field] if isinstance(ids[field], list) else [ids[field]]
                for position, value in enumerate(values):
                    if value in long_ids:
                        name = {"question": "field 'question'", "qa": f"choice {position} as \"question answer: choice\"",
                                "answer": f"field 'choices'[{position}]"}[field]
                        return f"sample {sample_id!r}, {name}"
        for generator, rows in prompts.items():
            for video_id, row in rows.items():
                for kind in ("event", "frame"):
                    if any(value in long_ids for value in row[kind]):
                        return f"data/prompts/{generator}.jsonl, video {video_id!r}, its {kind} prompts"
        return "?"

    longest = max(long_ids, key=lambda i: len(strings[i]))
    raise ValueError(f"{len(long_ids)} text(s) exceed the text encoder's {limit} tokens and would be truncated silently; first: "
                     f"{first_use()}; longest: {strings[longest][:120]!r}... Shorten them, or set features.truncate_text: true")


def cache_key(spec: BackboneSpec, architecture: dict, frame_size: int, num_frames: int) -> str:
    """Cached features are reused only for the same backbone: its name, seed, open_clip config and weights."""
    return stable_hash({"backbone": spec.__dict__, "architecture": architecture, "frames": frame_size, "num_frames": num_frames,
                        "weights": checkpoint_fingerprint(spec.pretrained) if spec.pretrained and spec.pretrained != "openai" else None})


def run(params, args) -> None:
    cfg = params["features"]
    samples = [s for split in SPLITS for s in read_samples(SPLITS_DIR / f"{split}.jsonl")]
    frames = FrameStore(FRAMES)
    num_frames = params["frames"]["num_frames"]
    prompt_files = {p.name[: -len(".jsonl")]: p for p in sorted(PROMPTS.glob("*.jsonl")) if not p.name.endswith(".failures.jsonl")}
    strings, per_sample, prompts = collect_strings(samples, prompt_files, num_frames)
    spec = BackboneSpec(cfg["backbone"], cfg["pretrained"], cfg["seed"])
    device = "cuda" if cfg["device"] == "auto" and torch.cuda.is_available() else ("cpu" if cfg["device"] == "auto" else cfg["device"])
    backbone = FrozenBackbone(spec, device=device)
    check_text_lengths(backbone, strings, per_sample, prompts, truncate=cfg.get("truncate_text", False))
    cache = CACHE / cache_key(spec, backbone.architecture(), params["frames"]["size"], num_frames)
    (cache / "video").mkdir(parents=True, exist_ok=True)
    (cache / "text").mkdir(parents=True, exist_ok=True)

    video_ids = sorted({s.video_id for s in samples})
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

    chunk = cfg["text_chunk"]
    chunks = []
    for start in tqdm(range(0, len(strings), chunk), desc="features[text]", unit="chunk"):
        part = strings[start : start + chunk]
        path = cache / "text" / f"{stable_hash(part)}.npz"
        if not discard_corrupt(path, npz_problem):
            pooled, tokens, lengths = backbone.text_features(part)
            with atomic_path(path) as tmp:
                with open(tmp, "wb") as handle:
                    np.savez(handle, pooled=pooled.half().cpu().numpy(), tokens=tokens.half().cpu().numpy(), lengths=lengths.cpu().numpy())
        chunks.append(path)
    _assemble(cached, video_ids, chunks, strings, per_sample, prompts, spec, num_frames)


def _assemble(cached, video_ids, chunks, strings, per_sample, prompts, spec, num_frames) -> None:
    video = np.stack([np.load(cached[v]) for v in video_ids])  # [V, T, 1+P, D]
    loaded = [np.load(p) for p in chunks]
    max_len = int(max(c["lengths"].max() for c in loaded))
    tmp = OUT.with_name(OUT.name + ".tmp")
    import shutil

    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file({"cls": torch.from_numpy(video[:, :, 0]).contiguous(), "patches": torch.from_numpy(video[:, :, 1:]).contiguous()}, str(tmp / "video.safetensors"))
    save_file(
        {
            "pooled": torch.from_numpy(np.concatenate([c["pooled"] for c in loaded])),
            "tokens": torch.from_numpy(np.concatenate([c["tokens"][:, :max_len] for c in loaded])).contiguous(),
            "lengths": torch.from_numpy(np.concatenate([c["lengths"] for c in loaded]).astype(np.int64)),
        },
        str(tmp / "text.safetensors"),
    )
    index = {
        "backbone": spec.__dict__,
        "num_frames": num_frames,
        "video_ids": video_ids,
        "strings": strings,
        "samples": per_sample,
        "prompts": prompts,
    }
    atomic_write_json(tmp / "index.json", index)
    shutil.rmtree(OUT, ignore_errors=True)
    tmp.rename(OUT)
    print(f"features: {len(video_ids)} videos, {len(strings)} strings, backbone {spec.name} -> {OUT}")


def main(argv=None) -> int:
    from cater.stages.common import stage_main

    return stage_main(__doc__, run, argv=argv, sections=('frames', 'features'))


if __name__ == "__main__":
    sys.exit(main())
