"""One training epoch the seed's way (frozen backbone every step) vs this project's way (cached features).

The seed repository trains with its frozen CLIP inside the model: every step it decodes each sample's
frame images from disk, resizes and normalises them, tokenises the frame prompts (32 tokens) and the
"question answer: choice" strings (64 tokens), and runs the vision tower on B*T frames and the text tower
on B*T prompts and B*C choice strings before the trainable part. This benchmark reproduces that cost
structure with *this project's* modules (no seed code): the same `FrozenBackbone`, the same student, loss,
optimizer and schedule as `cater.train`, on the same shapes workspace as the cached run, in one process:

  (a) seed-style   per batch: PIL-decode the frames from PNG files (written once, untimed, like the
                   seed's frame_paths), resize to the backbone's image size, CLIP-normalise, vision tower
                   on B*T frames (CLS + patch tokens), text tower on B*T prompts at 32 tokens and B*C
                   choice strings at 64 (capped at the backbone's context), then student forward,
                   backward, AdamW step; then the validation pass, computed the same way
  (b) cater cached `cater.train.train` on the `features` stage's store, timed as
                   benchmarks/bench_cached_features.py does: (T(1 + n epochs) - T(1)) / n

Both sides: 1 thread, distill mode none (no teacher stage; the teacher terms cost nothing either way),
the repo's params.yaml otherwise (batch 32, default student). A backbone whose full seed-style epoch
would be too slow on one thread (ViT-B-16 by default, `--steps-for`) is timed over `--steps` full
training steps and extrapolated to the epoch's step count; its validation pass is run in full.

    python benchmarks/bench_vs_seed.py [--videos 40] [--backbones cater-tiny ViT-B-16] [--steps 1] [--repeats 3]

The defaults take about 9 minutes on the 2-core CPU machine, 4 of them in ViT-B-16's one-off features
stage. Results and discussion: benchmarks/bench_vs_seed.md.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import io
import json
import math
import os
import platform
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

PROMPT_TOKENS = 32  # the seed's prompt_len
CHOICE_TOKENS = 64  # the seed's choice_len


# ---- the workspace ---------------------------------------------------------------------------------------------


def build_workspace(root: Path, videos: int, backbone: str, num_frames: int) -> tuple[dict, float]:
    """The real stages dataset -> features in `root` (the cwd); returns params and the features stage's seconds."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["dataset"]["shapes"]["videos"] = {"train": videos, "val": 2, "test": 2}
    params["frames"]["num_frames"] = num_frames
    params["frames"]["workers"] = 1  # one decode process at a time: this benchmark stays on one core
    params["features"]["backbone"] = backbone
    params["train"]["distill"]["mode"] = "none"
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    from cater.stages import dataset, features, frames, prompts, splits

    args = argparse.Namespace(generator="annotations")
    log = io.StringIO()
    with contextlib.redirect_stdout(log):
        for stage in (dataset, frames, splits, prompts):
            stage.run(params, args)
        start = time.perf_counter()
        features.run(params, args)
        seconds = time.perf_counter() - start
    for line in log.getvalue().splitlines():  # the stages' own summaries of the sizes
        if line.startswith(("splits:", "features:")):
            print(f"  {line}")
    return params, seconds


def write_pngs(root: Path, video_ids: list[str]) -> dict[str, list[Path]]:
    """Every video's stored frames as one PNG file per frame (the seed's `frame_paths`), untimed."""
    from PIL import Image

    from cater.data.frames import FrameStore, frame_stem

    store = FrameStore(Path("data/frames"))
    paths = {}
    for vid in video_ids:
        folder = root / "png" / frame_stem(vid)
        folder.mkdir(parents=True, exist_ok=True)
        paths[vid] = []
        for t, frame in enumerate(store.load(vid)):
            path = folder / f"{t:03d}.png"
            Image.fromarray(frame).save(path)
            paths[vid].append(path)
    return paths


# ---- the seed-style step ---------------------------------------------------------------------------------------


class SeedStyleInputs:
    """Builds the student's batch from raw inputs every step: PNG frames, prompt strings, choice strings."""

    def __init__(self, backbone, split, strings: dict, png: dict[str, list[Path]], num_frames: int):
        self.backbone, self.split, self.png, self.t = backbone, split, png, num_frames
        self.prompt_len = min(PROMPT_TOKENS, backbone.context_length)
        self.choice_len = min(CHOICE_TOKENS, backbone.context_length)
        # the texts behind the split's string ids (the features store keeps them in strings.json)
        self.prompts = [[strings["prompts"][int(i)] if i >= 0 else "" for i in row] for row in split.prompt_ids]
        self.choices = [[strings["pooled"][int(i)] for i, real in zip(ids, mask) if real]
                        for ids, mask in zip(split.choice_ids, split.choice_mask)]
        self.seconds = {"frames (PNG decode, resize)": 0.0, "vision tower": 0.0, "text (tokenise + tower)": 0.0}

    def frames(self, rows: list[int]) -> np.ndarray:
        from PIL import Image

        s = self.backbone.image_size
        out = []
        for r in rows:
            for path in self.png[self.split.video_ids[r]]:
                with Image.open(path) as img:
                    out.append(np.asarray(img.convert("RGB").resize((s, s), Image.BILINEAR)))
        return np.stack(out)  # uint8 [B*T, S, S, 3]; FrozenBackbone.preprocess scales and CLIP-normalises

    @torch.no_grad()
    def text(self, texts: list[str], length: int):
        """The frozen text tower on `texts` padded / cut to `length` tokens: (pooled [S, D], tokens [S, L, D], lengths [S])."""
        model = self.backbone.model
        ids = self.backbone.tokenizer(texts, context_length=length)
        x = model.token_embedding(ids) + model.positional_embedding[:length]
        x = model.transformer(x, attn_mask=model.attn_mask[:length, :length])
        x = model.ln_final(x) @ model.text_projection
        eot = ids.argmax(dim=-1)
        return x[torch.arange(len(texts)), eot], x, eot + 1

    def __call__(self, rows: list[int]) -> dict:
        b, t = len(rows), self.t
        clock = time.perf_counter()
        images = self.frames(rows)
        now = time.perf_counter()
        self.seconds["frames (PNG decode, resize)"] += now - clock
        cls, patches = self.backbone.frame_features(images)
        clock, now = now, time.perf_counter()
        self.seconds["vision tower"] += now - clock
        _, prompt_tokens, prompt_lengths = self.text([p for r in rows for p in self.prompts[r]], self.prompt_len)
        counts = [len(self.choices[r]) for r in rows]
        pooled, _, _ = self.text([c for r in rows for c in self.choices[r]], self.choice_len)
        self.seconds["text (tokenise + tower)"] += time.perf_counter() - now
        c = max(counts)
        choices = torch.zeros(b, c, pooled.shape[-1])
        choice_mask = torch.zeros(b, c, dtype=torch.bool)
        start = 0
        for i, n in enumerate(counts):
            choices[i, :n] = pooled[start : start + n]
            choice_mask[i, :n] = True
            start += n
        positions = torch.arange(self.prompt_len)
        index = torch.tensor(rows)
        return {
            "cls": cls.float().reshape(b, t, -1),
            "patches": patches.float().reshape(b, t, patches.shape[1], -1),
            "prompt_tokens": prompt_tokens.reshape(b, t, self.prompt_len, -1),
            "prompt_pad": (positions >= prompt_lengths[:, None]).reshape(b, t, self.prompt_len),
            "has_prompt": self.split.prompt_ids[index] >= 0,
            "choices": choices,
            "choice_mask": choice_mask,
            "question": None,  # the seed encodes no separate question; the default student does not read it
            "labels": self.split.labels[index],
            "teacher_logits": torch.zeros(b, c),
            "teacher_valid": torch.zeros(b, dtype=torch.bool),
        }


def seed_style(params: dict, png: dict, steps: int | None, warmup: int, repeats: int) -> dict:
    """One seed-style epoch (or `steps` of its training steps, extrapolated), the fastest of `repeats` runs on fresh
    students; returns seconds and a breakdown."""
    from cater.distill import DistillationLoss
    from cater.models.backbone import BackboneSpec, FrozenBackbone
    from cater.stages.train import prepare
    from cater.train import StudentWithLoss, accuracy, build_student, lr_factor, parameter_groups, seed_everything

    cfg, feats, tensors, _ = prepare(params)
    strings = json.loads((feats.directory / "strings.json").read_text())
    backbone = FrozenBackbone(BackboneSpec(**feats.index["backbone"]))
    train_in = SeedStyleInputs(backbone, tensors["train"], strings, png, feats.num_frames)
    val_in = SeedStyleInputs(backbone, tensors["val"], strings, png, feats.num_frames)
    n, bs = len(tensors["train"]), cfg.batch_size
    total_steps = math.ceil(n / bs)

    def fresh():
        seed_everything(cfg.seed)
        module = StudentWithLoss(build_student(cfg, feats), DistillationLoss(cfg.distill, feats.embed_dim, 0))
        optimizer = torch.optim.AdamW(parameter_groups(module, cfg.weight_decay), lr=cfg.lr)
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: lr_factor(step, cfg.epochs * total_steps, cfg.lr_schedule, cfg.warmup_fraction))
        return module, optimizer, schedule

    def step(module, optimizer, schedule, batch):
        module.train()
        loss, _ = module(batch)
        if not torch.isfinite(loss):
            raise RuntimeError(f"seed-style step: loss {float(loss)}")
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()

    # warm-up: one step on `warmup` samples, on a student that is then thrown away
    step(*fresh(), train_in(list(range(min(warmup, n)))))
    order = torch.randperm(n, generator=torch.Generator().manual_seed(cfg.seed)).tolist()
    batches = [order[i : i + bs] for i in range(0, n, bs)]
    timed = batches if steps is None else batches[:steps]
    scale = n / sum(len(rows) for rows in timed)  # per sample, over the whole epoch's samples (1 when all are timed)
    runs = []
    for _ in range(repeats):
        for inputs in (train_in, val_in):
            inputs.seconds = dict.fromkeys(inputs.seconds, 0.0)
        module, optimizer, schedule = fresh()
        start = time.perf_counter()
        for rows in timed:
            step(module, optimizer, schedule, train_in(rows))
        train_seconds = (time.perf_counter() - start) * scale
        student = module.student.eval()
        start = time.perf_counter()
        logits = []
        with torch.no_grad():
            for i in range(0, len(tensors["val"]), bs):
                b = val_in(list(range(i, min(i + bs, len(tensors["val"])))))
                logits.append(student(b["cls"], b["patches"], b["prompt_tokens"], b["prompt_pad"], b["has_prompt"],
                                      b["choices"], b["choice_mask"], b["question"])[0])
        val_seconds = time.perf_counter() - start
        accuracy(torch.cat(logits), tensors["val"].labels)
        breakdown = {k: train_in.seconds[k] * scale + val_in.seconds[k] for k in train_in.seconds}
        breakdown["student fwd/bwd/step + rest"] = train_seconds + val_seconds - sum(breakdown.values())
        runs.append({"epoch": train_seconds + val_seconds, "train": train_seconds, "val": val_seconds, "breakdown": breakdown})
    best = min(runs, key=lambda run: run["epoch"])
    return {**best, "all": [run["epoch"] for run in runs], "timed_steps": len(timed), "steps": len(batches),
            "extrapolated": len(timed) < len(batches), "image_size": backbone.image_size,
            "frames_per_epoch": (n + len(tensors["val"])) * feats.num_frames,
            "text_tokens": (train_in.prompt_len, train_in.choice_len)}


def seed_pixel_list_cost(png: dict, image_size: int, frames: int = 8) -> tuple[float, float]:
    """Seconds per frame for the pixel conversion: numpy (what (a) uses) vs a Python list of pixels (the seed's
    `list(img.getdata())` way), on `frames` of the PNGs. Reported, not added to (a)."""
    from PIL import Image

    paths = [p for ps in png.values() for p in ps][:frames]
    imgs = [Image.open(p).convert("RGB").resize((image_size, image_size), Image.BILINEAR) for p in paths]
    start = time.perf_counter()
    for img in imgs:
        np.asarray(img, dtype=np.float32)
    fast = (time.perf_counter() - start) / len(imgs)
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # getdata: deprecated in recent Pillow, still the seed's call
        for img in imgs:
            torch.tensor(list(img.getdata()), dtype=torch.float32)
    slow = (time.perf_counter() - start) / len(imgs)
    return fast, slow


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=40, help="training videos (4 questions each, 5 choices)")
    parser.add_argument("--frames", type=int, default=8, help="frames per video")
    parser.add_argument("--backbones", nargs="+", default=["cater-tiny", "ViT-B-16"])
    parser.add_argument("--epochs", type=int, default=3, help="timed cached epochs after the first (bench_cached_features)")
    parser.add_argument("--steps", type=int, default=1, help="seed-style training steps timed for the --steps-for backbones")
    parser.add_argument("--steps-for", nargs="*", default=["ViT-B-16"], help="backbones timed over --steps steps, extrapolated")
    parser.add_argument("--warmup", type=int, default=2, help="samples in the seed-style warm-up step")
    parser.add_argument("--repeats", type=int, default=3,
                        help="runs of each side for the fully timed backbones, fastest kept (the extrapolated ones: 1)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    from bench_cached_features import time_epoch  # this project's cached-epoch timing, unchanged

    wall = time.perf_counter()
    print(f"machine: {cpu_model()}, {os.cpu_count()} cores, torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"cuda {torch.cuda.is_available()}, python {platform.python_version()}")
    print(f"data: shapes, {args.videos} train videos = {4 * args.videos} questions, 5 choices, {args.frames} frames; "
          f"val 2 videos = 8 questions; batch 32; distill none; backbones random-init")
    rows = []
    cwd = os.getcwd()
    for name in args.backbones:
        print(f"{name}:", flush=True)
        with tempfile.TemporaryDirectory() as tmp:
            os.chdir(tmp)
            try:
                params, features_seconds = build_workspace(Path(tmp), args.videos, name, args.frames)
                from cater.features import CachedFeatures

                png = write_pngs(Path(tmp), CachedFeatures(Path("data/features")).index["video_ids"])
                partial = name in args.steps_for
                repeats = 1 if partial else args.repeats
                seed = seed_style(copy.deepcopy(params), png, args.steps if partial else None, args.warmup, repeats)
                cached_runs = [time_epoch(params, False, args.epochs) for _ in range(repeats)]
                cached = min(cached_runs)
                fast, slow = seed_pixel_list_cost(png, seed["image_size"])
            finally:
                os.chdir(cwd)
        how = (f"{seed['timed_steps']} of {seed['steps']} train steps timed, extrapolated" if seed["extrapolated"]
               else f"all {seed['steps']} train steps timed")
        pixel_list = (slow - fast) * seed["frames_per_epoch"]
        rows.append((name, seed, cached, how, features_seconds, pixel_list))
        runs = lambda values: "" if len(values) < 2 else f" [fastest of {len(values)}: {', '.join(f'{v:.3f}' for v in values)}]"
        print(f"  (a) seed-style: {seed['epoch']:.3f} s/epoch{runs(seed['all'])} = train {seed['train']:.3f} s ({how}) + val {seed['val']:.3f} s; "
              f"{seed['image_size']} px, text at {seed['text_tokens'][0]} / {seed['text_tokens'][1]} tokens (prompts / choices)")
        for part, value in seed["breakdown"].items():
            print(f"      {part:<30} {value:9.3f} s/epoch ({100 * value / seed['epoch']:.0f} %)")
        print(f"  (b) cater cached: {cached:.4f} s/epoch{runs(cached_runs)} (mean of {args.epochs} epochs after the first); "
              f"the features stage ran once in {features_seconds:.1f} s")
        print(f"  not in (a): the seed's list(img.getdata()) pixel conversion costs {slow * 1e3:.2f} ms/frame vs "
              f"{fast * 1e3:.3f} ms with numpy, +{pixel_list:.2f} s/epoch over {seed['frames_per_epoch']} frames", flush=True)
    print()
    print("| backbone | (a) seed-style, s/epoch | (b) cater cached, s/epoch | (a)/(b) | (a) timing | features stage (once) |")
    print("|---|---|---|---|---|---|")
    for name, seed, cached, how, features_seconds, _ in rows:
        print(f"| {name} | {seed['epoch']:.3f} | {cached:.4f} | {seed['epoch'] / cached:.1f}x | {how} | {features_seconds:.1f} s |")
    print()
    for name, seed, cached, _, _, pixel_list in rows:
        print(f"{name}: with the seed's per-pixel list conversion added to (a): {seed['epoch'] + pixel_list:.3f} s/epoch, "
              f"{(seed['epoch'] + pixel_list) / cached:.1f}x")
    print(f"\ntotal run time {time.perf_counter() - wall:.0f} s")


if __name__ == "__main__":
    main()
