"""Stage `dataset`: raw annotations (+ videos) -> data/samples.jsonl in the normalized schema."""
from __future__ import annotations

import shutil
import sys
from pathlib import Path

from cater.data.schema import write_samples
from cater.data.shapes import ShapesConfig, generate
from cater.io import atomic_write_text

SAMPLES = Path("data/samples.jsonl")
VIDEOS = Path("data/videos")


def run(params, args) -> None:
    cfg = dict(params["dataset"])
    name = cfg.pop("name")
    VIDEOS.mkdir(parents=True, exist_ok=True)
    if name == "shapes":
        # generated into a scratch folder first, so a killed run leaves no half-filled data/videos
        scratch = VIDEOS.parent / "videos_tmp"
        shutil.rmtree(scratch, ignore_errors=True)
        samples = generate(scratch, ShapesConfig(**cfg["shapes"], seed=cfg["seed"]))
        shutil.rmtree(VIDEOS)
        (scratch / "videos").rename(VIDEOS)
        shutil.rmtree(scratch)
        for sample in samples:
            sample.video = str(VIDEOS / Path(sample.video).name)
    else:
        from cater.data.adapters import ADAPTERS

        if name not in ADAPTERS:
            raise ValueError(f"params.yaml: dataset.name {name!r} is unknown; choose shapes or one of {sorted(ADAPTERS)}")
        cfg.pop("shapes", None)  # the demo generator's block may stay in params.yaml
        samples = ADAPTERS[name]({**cfg, "name": name})
        atomic_write_text(VIDEOS / "SOURCE.txt", f"{name}: videos are read in place from the paths in data/samples.jsonl\n")
    write_samples(SAMPLES, samples)
    counts = {split: sum(s.split == split for s in samples) for split in ("train", "val", "test")}
    print(f"dataset {name}: {len(samples)} samples {counts} -> {SAMPLES}")


def main(argv=None) -> int:
    from cater.stages.common import stage_main

    return stage_main(__doc__, run, argv=argv, sections=('dataset',))


if __name__ == "__main__":
    sys.exit(main())
