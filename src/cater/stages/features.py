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
from cater.io import atomic_path, atomic_write_json, checkpoint_fingerprint, read_jsonl, stable_hash
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
        prompts[generator] = rows
    return list(strings), per_sample, prompts


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
    cache = CACHE / cache_key(spec, backbone.architecture(), params["frames"]["size"], num_frames)
    (cache / "video").mkdir(parents=True, exist_ok=True)
    (cache / "text").mkdir(parents=True, exist_ok=True)

    video_ids = sorted({s.video_id for s in samples})
    cached = {v: cache / "video" / f"{frame_stem(v)}-{frames.digest(v)}.npy" for v in video_ids}
    todo = [v for v in video_ids if not cached[v].exists()]
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
        if not path.exists():
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
