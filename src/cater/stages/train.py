"""Stage `train`: cached features + teacher outputs -> models/student.safetensors and metrics/train/ (dvclive).

The prompt variant, prompt generator, distillation mode and teacher are picked here by params,
so experiments that change them re-run only `train` and `eval`. The checkpoint is safetensors (the
weights) with the resolved configs and the selected epoch as JSON metadata (`cater.train.save_student`);
it holds no pickle, so loading a pulled one runs no code.
"""
from __future__ import annotations

import sys
from pathlib import Path

from cater.data.schema import read_samples
from cater.features import CachedFeatures
from cater.train import (FeatureBatcher, SplitTensors, TrainConfig, derangement, labelled_subset, load_teacher_outputs,
                         save_student, train)

SPLITS_DIR = Path("data/splits")
FEATURES = Path("data/features")
TEACHER_DIR = Path("data/teacher")
CHECKPOINT = Path("models/student.safetensors")
LIVE_DIR = Path("metrics/train")


def prepare(params) -> tuple[TrainConfig, CachedFeatures, dict, FeatureBatcher]:
    cfg = TrainConfig(**params["train"])
    features = CachedFeatures(FEATURES)
    teacher = None
    if cfg.distill.mode != "none":
        teacher = load_teacher_outputs(TEACHER_DIR / cfg.teacher / "outputs.jsonl",
                                       keep_hidden=cfg.distill.align_weight > 0 or cfg.distill.embed_weight > 0)
    splits = {name: read_samples(SPLITS_DIR / f"{name}.jsonl") for name in ("train", "val", "test")}
    random_map = None
    if cfg.prompt_variant == "random":
        random_map = {}
        for name, samples in splits.items():  # shuffle within a split, so no prompt crosses splits
            random_map.update(derangement(sorted({s.video_id for s in samples}), cfg.seed))
    labelled = labelled_subset(splits["train"], cfg.label_fraction, cfg.seed) if cfg.label_fraction < 1 else None
    tensors = {name: SplitTensors(samples, features, cfg, teacher if name == "train" else None, random_map,
                                  labelled if name == "train" else None)
               for name, samples in splits.items()}
    backbone = frames = None
    if cfg.backbone_on_the_fly:
        from cater.data.frames import FrameStore
        from cater.models.backbone import BackboneSpec, load_backbone

        backbone = load_backbone(BackboneSpec(**features.index["backbone"]))  # a store without "library" is open_clip's
        frames = FrameStore(Path("data/frames"))
    return cfg, features, tensors, FeatureBatcher(features, backbone, frames)


def run(params, args) -> None:
    from dvclive import Live

    cfg, features, tensors, batcher = prepare(params)
    missing = tensors["train"].missing_prompts
    if missing:
        print(f"train: {missing} training samples have no {cfg.prompt_generator} prompts (their videos failed the prompts stage)")
    if cfg.label_fraction < 1:
        labelled = int((tensors["train"].labels >= 0).sum())
        print(f"train: labels on {labelled}/{len(tensors['train'])} training samples (label_fraction {cfg.label_fraction})")
    if cfg.distill.mode != "none":
        valid = int(tensors["train"].teacher_valid.sum())
        nonfinite = tensors["train"].nonfinite_teacher_rows
        print(f"train: teacher {cfg.teacher} gives usable outputs for {valid}/{len(tensors['train'])} training samples "
              f"({nonfinite} rows with non-finite choice_logits treated as missing)")
        if tensors["train"].nonfinite_teacher_hidden:
            print(f"train: {tensors['train'].nonfinite_teacher_hidden} teacher rows have a non-finite hidden state "
                  f"(no align target for them)")
    with Live(dir=str(LIVE_DIR), dvcyaml=None, save_dvc_exp=False, report=None) as live:
        def log(epoch, metrics):
            for key, value in metrics.items():
                live.log_metric(key, value)
            live.next_step()

        family = ((params.get("teacher") or {}).get("models") or {}).get(cfg.teacher, {}).get("family")
        checkpoint = train(cfg, tensors["train"], tensors["val"], batcher, features, log=log, teacher_family=family)
        live.summary["best_epoch"] = checkpoint["best_epoch"]
        live.summary["best_val_accuracy"] = checkpoint["val_accuracy"]
    save_student(checkpoint, CHECKPOINT)  # atomic; the same bytes for the same checkpoint in every run
    print(f"train: best epoch {checkpoint['best_epoch']} val accuracy {checkpoint['val_accuracy']:.4f} -> {CHECKPOINT}")


def main(argv=None) -> int:
    from cater.stages.common import stage_main

    return stage_main(__doc__, run, argv=argv, sections=('train', 'teacher', 'prompts'))


if __name__ == "__main__":
    sys.exit(main())
