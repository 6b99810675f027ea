"""Stage `frames`: decode N uniform frames per video, once, in parallel, resumably.

Frames are stored as one PNG per frame by default (`frames.codec`: png, lossless; jpeg at
`frames.quality`; npy, raw), in one file per video (cater.data.frames). Finished videos are kept in
data/.cache/frames/<config hash>/ (one atomic file each), so a killed
run continues where it stopped; the output directory is assembled at the end.

Before anything is decoded, every sample's `video` must lie under data/ (official datasets are linked
in as data/raw/<dataset>); a samples file cannot point elsewhere.
"""
from __future__ import annotations

import json
import shutil
import sys
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

from tqdm import tqdm

from cater.data.frames import (BadVideoError, check_media_paths, decode_video, frame_stem, frames_problem, frames_suffix,
                               load_frames, media_roots, pixel_digest, save_frames)
from cater.data.schema import read_samples
from cater.io import atomic_write_json, discard_corrupt, source_digest, stable_hash
from cater.processes import die_with_parent

SAMPLES = Path("data/samples.jsonl")
OUT = Path("data/frames")
CACHE = Path("data/.cache/frames")


def source_fingerprint(path: str, start, end) -> str:
    """Identifies the decoded input cheaply: path, window, size and modification time."""
    try:
        stat = Path(path).stat()
        return f"{path}|{start}|{end}|{stat.st_size}|{stat.st_mtime_ns}"
    except OSError:
        return f"{path}|{start}|{end}|missing"


def _decode_one(job: tuple) -> tuple[str, dict | None, str | None]:
    """Runs in a worker process (the decord reader is created here, never in the parent): decode, store, and
    return the times, the stored pixels' digest and shape, or the error."""
    video_id, path, num_frames, size, start, end, target, codec, quality = job
    report: dict = {}
    try:
        frames, times = decode_video(path, num_frames, size, start, end, report=report)
    except BadVideoError as exc:
        return video_id, None, str(exc)
    save_frames(target, frames, codec, quality)
    stored = load_frames(target) if codec == "jpeg" else frames  # lossy: the digest is of what readers get
    return video_id, {"times": times, "digest": pixel_digest(stored), "shape": list(stored.shape), **report}, None


def run(params, args) -> None:
    cfg = params["frames"]
    samples = read_samples(SAMPLES)
    check_media_paths(samples, media_roots(), str(SAMPLES))
    videos: dict[str, tuple] = {}
    for sample in samples:  # one decode per (video, window); samples of one clip share it
        videos.setdefault(sample.video_id, (sample.video, sample.start, sample.end))
    # video ids with the same source (file and window), e.g. seed JSONL rows of one folder with their own prompts:
    # decoded and stored once, under the first id; the others are aliases in index.json
    canonical: dict[tuple, str] = {}
    aliases = {vid: canonical.setdefault(source, vid) for vid, source in sorted(videos.items())}
    aliases = {vid: first for vid, first in aliases.items() if vid != first}
    videos = {vid: source for vid, source in videos.items() if vid not in aliases}
    codec, quality = cfg.get("codec", "png"), cfg.get("quality", 95)
    suffix = frames_suffix(codec)
    key = {k: cfg[k] for k in ("num_frames", "size")}
    key["code"] = source_digest("cater.data.frames")  # how frames are chosen and decoded
    if codec != "npy":  # npy keeps the cache folder of stores made before codecs existed
        key.update(codec=codec, quality=quality if codec == "jpeg" else None)
    cache = CACHE / stable_hash(key)
    cache.mkdir(parents=True, exist_ok=True)
    times_path = cache / "times.json"
    # finished videos: {video_id: {"times": [...], "source": fingerprint}}; a changed file is decoded again
    done: dict[str, dict] = json.loads(times_path.read_text()) if times_path.exists() else {}
    sources = {vid: source_fingerprint(path, start, end) for vid, (path, start, end) in videos.items()}
    jobs = [
        (vid, path, cfg["num_frames"], cfg["size"], start, end, str(cache / f"{frame_stem(vid)}{suffix}"), codec, quality)
        for vid, (path, start, end) in sorted(videos.items())
        if not (done.get(vid, {}).get("source") == sources[vid] and discard_corrupt(cache / f"{frame_stem(vid)}{suffix}", frames_problem))
    ]
    bad: dict[str, str] = {}
    if jobs:
        # die_with_parent: a SIGKILLed stage leaves no orphaned workers
        with ProcessPoolExecutor(max_workers=max(1, cfg["workers"]), mp_context=get_context("spawn"),
                                 initializer=die_with_parent) as pool:
            results = pool.map(_decode_one, jobs, chunksize=max(1, len(jobs) // (8 * max(1, cfg["workers"]))))
            for i, (vid, decoded, error) in enumerate(tqdm(results, total=len(jobs), desc="frames", unit="video")):
                if error:
                    bad[vid] = error
                    done.pop(vid, None)
                else:
                    done[vid] = {**decoded, "source": sources[vid]}
                if i % 64 == 0:
                    atomic_write_json(times_path, done)
        atomic_write_json(times_path, done)
    if bad:
        report = CACHE / "bad_videos.json"  # a diagnostic, not an output: the run may stop right after it
        atomic_write_json(report, bad)
        affected = sum(s.video_id in bad for s in samples)
        if not cfg["skip_bad"]:
            first = "\n  ".join(f"{v}: {e}" for v, e in list(bad.items())[:10])
            raise RuntimeError(
                f"{len(bad)} unreadable video(s) ({affected} samples), listed in {report}:\n  {first}\n"
                "Fix or remove them, or set frames.skip_bad: true to drop those samples."
            )
        print(f"frames: skipping {len(bad)} bad video(s), {affected} samples dropped (frames.skip_bad), see {report}")
    bad.update({vid: f"same source as {first}: {bad[first]}" for vid, first in aliases.items() if first in bad})
    kept = {vid: done[vid] for vid in videos if vid in done and vid not in bad}
    past_end = {vid: entry["past_end_s"] for vid, entry in kept.items() if entry.get("past_end_s")}
    if past_end:  # e.g. a TVQA ts window that runs past the clip: its frames come from the part inside the clip
        worst = max(past_end, key=past_end.get)
        print(f"frames: {len(past_end)} window(s) end after their clip's last frame and were cut there "
              f"(by up to {past_end[worst]:.2f} s, {worst}); listed with past_end_s in {OUT / 'index.json'}")
    _assemble(kept, cache, cfg, bad, suffix, {vid: first for vid, first in aliases.items() if first in kept})


def _assemble(done: dict[str, dict], cache: Path, cfg, bad: dict[str, str], suffix: str, aliases: dict[str, str]) -> None:
    tmp = OUT.with_name(OUT.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    index = {}
    for vid in sorted(done):
        name = f"{frame_stem(vid)}{suffix}"
        shutil.copyfile(cache / name, tmp / name)
        entry = done[vid]
        if not (entry.get("digest") and entry.get("shape")):  # decoded by an older version of this stage
            frames = load_frames(tmp / name)
            entry = {**entry, "digest": pixel_digest(frames), "shape": list(frames.shape)}
        index[vid] = {"file": name, "times": entry["times"], "num_frames": cfg["num_frames"], "shape": entry["shape"],
                      "digest": entry["digest"], **({"past_end_s": entry["past_end_s"]} if entry.get("past_end_s") else {})}
    for vid, first in sorted(aliases.items()):  # the same file and entry as the video it repeats
        index[vid] = index[first]
    atomic_write_json(tmp / "index.json", index)
    atomic_write_json(tmp / "bad_videos.json", bad)
    shutil.rmtree(OUT, ignore_errors=True)
    tmp.rename(OUT)
    shared = f" ({len(aliases)} sharing another id's frames)" if aliases else ""
    print(f"frames: {len(index)} videos{shared} x {cfg['num_frames']} frames -> {OUT}")


def main(argv=None) -> int:
    from cater.stages.common import stage_main

    return stage_main(__doc__, run, argv=argv, sections=('frames',))


if __name__ == "__main__":
    sys.exit(main())
