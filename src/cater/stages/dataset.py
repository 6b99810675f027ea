"""Stage `dataset`: raw annotations (+ videos) -> data/samples.jsonl in the normalized schema.

An official dataset is read from `data/raw/<dataset.name>/` (the folder dvc.yaml declares as this stage's
and the frames stage's dependency): a copy of the release or a symlink to where it lives. Every path in
`dataset:` params must lie inside that folder, written relative to the repository, so neither dvc.lock
nor data/samples.jsonl holds a machine path and a clone elsewhere, with the release elsewhere, reuses
every output.
"""
from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path, PurePosixPath

from cater.data.schema import write_samples
from cater.data.shapes import ShapesConfig, generate
from cater.io import atomic_write_text

SAMPLES = Path("data/samples.jsonl")
VIDEOS = Path("data/videos")
RAW = Path("data/raw")
PATH_KEYS = ("annotations", "videos", "frames_dir", "subtitles", "video_mapping", "frames_root")  # dataset params that name files


def check_declared_paths(cfg: dict, name: str, source: str = "params.yaml") -> None:
    """Every path-valued `dataset` key must be a relative path inside data/raw/<name>/ (no `..`), and that
    folder must exist; otherwise a ValueError says which key and how to fix it."""
    root = RAW / name
    for key in PATH_KEYS:
        value = cfg.get(key)
        for item in (value if isinstance(value, (list, tuple)) else [value]):
            if item in (None, ""):
                continue
            text = str(item)
            parts = PurePosixPath(text.replace(os.sep, "/")).parts
            inside = not os.path.isabs(text) and ".." not in parts and parts[:3] == root.parts
            if not inside:
                raise ValueError(
                    f"{source}: dataset.{key} is {text!r}; the official files must be named inside {root}/ "
                    f"(e.g. {root}/{key if key != 'video_mapping' else 'youtube_mapping.txt'}), relative to the "
                    f"repository. Put the release there or link it: ln -s /where/it/lives {root}. A machine path "
                    "in params would enter dvc.lock and data/samples.jsonl and make every output machine-specific.")
    if not root.is_dir():
        raise ValueError(f"{root}/ does not exist: put the {name} release there, or link it "
                         f"(ln -s /where/it/lives {root}); see data/raw/README.md")


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
        from cater.data.registry import ADAPTERS

        if name not in ADAPTERS:
            raise ValueError(f"params.yaml: dataset.name {name!r} is unknown; choose shapes or one of {sorted(ADAPTERS)}")
        cfg.pop("shapes", None)  # the demo generator's block may stay in params.yaml
        check_declared_paths(cfg, name)
        samples = ADAPTERS[name]({**cfg, "name": name})
        from cater.data.registry import adapter_stats

        stats = adapter_stats(name)
        if stats.get("toy_render"):  # seed toy rows: their frames are drawn here, into data/videos
            from cater.data.seed_jsonl import render_toy_video

            for folder, (action_id, frame_seed) in sorted(stats["toy_render"].items()):
                render_toy_video(Path(folder), action_id, frame_seed)
        stats = {k: v for k, v in stats.items() if k != "dataset" and not isinstance(v, (dict, list))}
        if stats:
            print(f"dataset {name}: " + ", ".join(f"{k} {v}" for k, v in stats.items()))
        atomic_write_text(VIDEOS / "SOURCE.txt", f"{name}: videos are read in place from {RAW / name}/, as named in data/samples.jsonl\n")
    write_samples(SAMPLES, samples)
    counts = {split: sum(s.split == split for s in samples) for split in ("train", "val", "test")}
    print(f"dataset {name}: {len(samples)} samples {counts} -> {SAMPLES}")


def main(argv=None) -> int:
    from cater.stages.common import stage_main

    return stage_main(__doc__, run, argv=argv, sections=('dataset',))


if __name__ == "__main__":
    sys.exit(main())
