"""Stage `splits`: samples -> data/splits/{train,val,test}.jsonl (official splits, optional mini subsets).

Samples whose video the frames stage dropped (frames.skip_bad) are left out and counted.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from cater.data.schema import SPLITS, read_samples, write_samples
from cater.data.splits import hold_out_videos, subset
from cater.io import atomic_write_json

SAMPLES = Path("data/samples.jsonl")
FRAMES_INDEX = Path("data/frames/index.json")
OUT = Path("data/splits")


def check_usable(chosen: dict[str, list], samples, dropped: int) -> None:
    """Before any split is written: train and val need labelled samples (training and model selection) and
    test needs samples (unlabelled ones, like TVQA's test_public, are allowed); otherwise a clear error, here
    rather than at `train` after the prompts and teachers ran."""
    for split in SPLITS:
        labelled = sum(s.answer_idx is not None for s in chosen[split])
        if chosen[split] and (split == "test" or labelled):
            continue
        total = sum(s.split == split for s in samples)
        what = "samples" if not chosen[split] else "labelled samples"
        why = (f"{SAMPLES} has {total} {split} sample(s)" + (f", {dropped} sample(s) of all splits were dropped for lack of frames"
                                                            if dropped else "") +
               ("; check dataset.splits" if total == 0 else ""))
        raise ValueError(f"the {split} split has no {what} ({why}); train and val need labelled samples, test needs samples")


def run(params, args) -> None:
    cfg = params["splits"]
    samples = read_samples(SAMPLES)
    with_frames = set(json.loads(FRAMES_INDEX.read_text()))
    kept = [s for s in samples if s.video_id in with_frames]
    dropped = len(samples) - len(kept)
    summary = {"dropped_without_frames": dropped}
    pools = {split: [s for s in kept if s.split == split] for split in SPLITS}
    if cfg.get("val_from_train") is not None:  # e.g. TVQA with its labelled val as the test split
        if pools["val"]:
            raise ValueError(f"splits.val_from_train is set, but {SAMPLES} already has {len(pools['val'])} val sample(s); "
                             "map no official split to val (dataset.splits), or unset val_from_train")
        pools["train"], pools["val"] = hold_out_videos(pools["train"], cfg["val_from_train"], cfg["seed"])
        for sample in pools["val"]:
            sample.split = "val"
        summary["val_from_train"] = cfg["val_from_train"]
    mode = cfg.get("subset", "stratified")
    chosen_by_split = {split: subset(pools[split], cfg.get(f"{split}_n"), cfg["seed"], mode) for split in SPLITS}
    check_usable(chosen_by_split, samples, dropped)
    OUT.mkdir(parents=True, exist_ok=True)
    for split in SPLITS:
        pool, chosen = pools[split], chosen_by_split[split]
        write_samples(OUT / f"{split}.jsonl", chosen)
        summary[split] = {"samples": len(chosen), "of": len(pool), "videos": len({s.video_id for s in chosen})}
        summary[split]["question_types"] = {t: sum(s.question_type == t for s in chosen) for t in sorted({s.question_type for s in chosen})}
    atomic_write_json(OUT / "summary.json", summary)
    print("splits: " + ", ".join(f"{k} {summary[k]['samples']}" for k in SPLITS) + (f" ({dropped} dropped: no frames)" if dropped else ""))


def main(argv=None) -> int:
    from cater.stages.common import stage_main

    return stage_main(__doc__, run, argv=argv, sections=('splits',))


if __name__ == "__main__":
    sys.exit(main())
