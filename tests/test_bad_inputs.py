"""Bad input fails early and clearly: the cases of issue #11, one test each.

`CASES` is the table: each case, where it is now caught, and the test that pins it. Cases fixed in
earlier changes keep their tests in the modules that own them; `test_every_case_has_its_test`
checks that every referenced test exists. The others are tested below. Each failure names the file,
the sample or line, and the field; a corrupt resumable cache is named, discarded and recomputed; a
damaged stage output is named with the command that restores it.
"""
from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import copy
import importlib
import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from cater.config import ConfigError, load_params
from cater.data.frames import BadVideoError, FrameStore, decode_video
from cater.data.schema import Sample, write_samples
from cater.io import write_jsonl

REPO_PARAMS = Path(__file__).resolve().parents[1] / "params.yaml"

# case -> (where it is caught, "module::test")
CASES = {
    "a 1-frame video (was stored as 8 copies)": ("frames: decode", "test_bad_inputs::test_a_video_with_fewer_frames_than_num_frames_is_a_bad_video"),
    "num_frames larger than the video": ("frames: decode", "test_bad_inputs::test_a_video_with_fewer_frames_than_num_frames_is_a_bad_video"),
    "a ts window shorter than num_frames (frames repeated)": ("frames: decode", "test_bad_inputs::test_a_short_window_is_widened_to_distinct_frames"),
    "num_frames: 0": ("params.yaml", "test_bad_inputs::test_out_of_range_params_name_the_key"),
    "features.batch_size: -5": ("params.yaml", "test_bad_inputs::test_out_of_range_params_name_the_key"),
    "an unknown top-level params section": ("params.yaml", "test_params::test_unknown_key"),
    "an over-long question (silently truncated by the text encoder)": ("features, before encoding", "test_bad_inputs::test_texts_longer_than_the_text_encoder_are_an_error_naming_the_sample"),
    "a 102k-character question (kernel OOM kill)": ("samples schema", "test_schema::test_text_fields_over_their_limit_are_refused"),
    "NaN teacher logits (training went NaN, metrics looked valid)": ("teacher outputs -> missing rows", "test_teacher_nonfinite::test_chatunivi_non_finite_outputs_become_missing_rows"),
    "a truncated frame-cache file copied into data/frames as valid": ("frames: resumable cache", "test_bad_inputs::test_a_truncated_frame_cache_file_is_discarded_and_decoded_again"),
    "a prompts file missing test videos": ("features, before encoding", "test_bad_inputs::test_a_prompts_file_missing_videos_of_the_splits_is_an_error"),
    "an empty test split (failed only at train, after prompts and teachers)": ("splits", "test_bad_inputs::test_an_empty_split_fails_at_the_splits_stage_and_writes_nothing"),
    "a truncated .npy / .npz feature cache (unnamed, failed until deleted by hand)": ("features: resumable cache", "test_bad_inputs::test_truncated_feature_cache_files_are_discarded_and_recomputed"),
    "a truncated features safetensors file": ("features output, read by train/eval", "test_bad_inputs::test_a_damaged_feature_file_is_named"),
    "a corrupt student checkpoint": ("eval: load_student", "test_student_checkpoint::test_a_damaged_checkpoint_is_a_clear_error_naming_the_file"),
    "truncated frames with a cold teacher cache": ("frames output, read by teacher/prompts/features", "test_bad_inputs::test_damaged_frames_output_is_named_with_the_fix"),
}


def test_every_case_has_its_test():
    for case, (_, ref) in CASES.items():
        module, name = ref.split("::")
        assert callable(getattr(importlib.import_module(module), name, None)), f"{case}: {ref} does not exist"


# --- frames: videos shorter than num_frames -------------------------------------------------------------


def write_mp4(path: Path, frames: int, fps: int = 8, size: int = 64) -> Path:
    import av

    rng = np.random.default_rng(frames)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        for _ in range(frames):
            image = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(stream.encode())
    return path


@pytest.mark.parametrize("frames_in_video,num_frames", [(1, 8), (12, 16)])
def test_a_video_with_fewer_frames_than_num_frames_is_a_bad_video(tmp_path, frames_in_video, num_frames):
    video = write_mp4(tmp_path / "short.mp4", frames_in_video)
    with pytest.raises(BadVideoError, match=rf"short\.mp4: {frames_in_video} decodable frame\(s\), fewer than frames\.num_frames \({num_frames}\)"):
        decode_video(video, num_frames, 32)
    if frames_in_video > 1:  # as many as it has: fine (decord cannot batch-read a 1-frame mp4 at all)
        frames, times = decode_video(video, frames_in_video, 32)
        assert len(set(times)) == frames_in_video


def test_a_short_window_is_widened_to_distinct_frames(tmp_path):
    video = write_mp4(tmp_path / "clip.mp4", 40, fps=8)  # 5 s
    frames, times = decode_video(video, 8, 32, start=2.0, end=2.3)  # a 0.3 s window: 3 frames at 8 fps
    assert len(set(times)) == 8 and times == sorted(times)
    assert min(times) <= 2.0 <= max(times) and max(times) - min(times) <= 8 / 8  # centred on the window
    assert len({frame.tobytes() for frame in frames}) == 8  # no frame stored twice


# --- params ranges ------------------------------------------------------------------------------------


@pytest.mark.parametrize("dotted,value,bound", [
    ("frames.num_frames", 0, ">= 1"),
    ("features.batch_size", -5, ">= 1"),
    ("teacher.batch_size", 0, ">= 1"),
    ("train.lr", 0, "> 0"),
    ("train.label_fraction", 1.5, "<= 1"),
    ("train.distill.temperature", -1.0, "> 0"),
    ("splits.test_n", 0, ">= 1"),
])
def test_out_of_range_params_name_the_key(tmp_path, dotted, value, bound):
    params = copy.deepcopy(load_params(REPO_PARAMS))
    *parents, last = dotted.split(".")
    node = params
    for key in parents:
        node = node[key]
    node[last] = value
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    with pytest.raises(ConfigError, match=rf"{path}: {dotted} is {value!r}, must be {bound}"):
        load_params(path)


# --- features: text length, prompt coverage, corrupt caches ---------------------------------------------


def test_texts_longer_than_the_text_encoder_are_an_error_naming_the_sample(capsys):
    from cater.models.backbone import BackboneSpec, FrozenBackbone
    from cater.stages.features import check_text_lengths

    backbone = FrozenBackbone(BackboneSpec("cater-tiny"))
    long_question = "Which of the shapes " + "that appeared on the screen " * 6 + "moved first?"
    strings = ["What moved?", "What moved? answer: a circle", long_question, f"{long_question} answer: a circle"]
    per_sample = {"ok-q": {"question": 0, "qa": [1], "answer": [1]}, "long-q": {"question": 2, "qa": [3], "answer": [1]}}
    prompt = ["a circle moves", "a circle moves " * 12]
    rows = {"gpt": {"v1": {"event": [0, 0], "frame": [0, 0]}, "v2": {"event": [0, 1], "frame": [0, 0]}}}
    assert backbone.token_lengths(strings[:2]) == [5, 9] and backbone.token_lengths(strings[2:3])[0] > backbone.context_length
    with pytest.raises(ValueError, match=r"2 text\(s\) exceed the text encoder's 32 tokens.*sample 'long-q', field 'question'.*truncate_text"):
        check_text_lengths(backbone, strings, prompt[:1], per_sample, rows, truncate=False)
    with pytest.raises(ValueError, match=r"1 text\(s\) exceed.*data/prompts/gpt.jsonl, video 'v2', its event prompts"):
        check_text_lengths(backbone, strings[:2], prompt, {"ok-q": per_sample["ok-q"]}, rows, truncate=False)
    assert check_text_lengths(backbone, strings, prompt, per_sample, rows, truncate=True) == [5, 32]  # capped at the context
    assert "3 text(s) exceed" in capsys.readouterr().out
    assert check_text_lengths(backbone, strings[:2], prompt[:1], {"ok-q": per_sample["ok-q"]}, {}, truncate=False) == [5]


from helpers.features_inputs import prompt_row as _prompt_row, sample as _sample  # noqa: E402


def test_a_prompts_file_missing_videos_of_the_splits_is_an_error(tmp_path):
    from cater.stages.features import collect_strings

    samples = [_sample("v1", "train"), _sample("v2", "val"), _sample("v3", "test")]
    prompts = tmp_path / "gpt.jsonl"
    write_jsonl(prompts, [_prompt_row("v1"), _prompt_row("v2")])
    with pytest.raises(ValueError, match=r"gpt\.jsonl: no prompts for 1 video\(s\) of the splits.*first: v3 \(test\).*re-run the prompts stage"):
        collect_strings(samples, {"gpt": prompts}, 4)
    (tmp_path / "gpt.failures.json").write_text(json.dumps([{"video_id": "v3", "error": "refused"}]))  # recorded by the stage: allowed
    _, _, _, rows = collect_strings(samples, {"gpt": prompts}, 4)
    assert sorted(rows["gpt"]) == ["v1", "v2"]


@pytest.fixture
def features_workspace(tmp_path, monkeypatch):
    """splits, a frame store and one prompts file, written directly, for the features stage (cater-tiny)."""
    from helpers.features_inputs import write_features_inputs

    monkeypatch.chdir(tmp_path)
    write_features_inputs(tmp_path, size=32)
    params = load_params(REPO_PARAMS)
    params["frames"]["num_frames"] = 4
    params["features"] = {**params["features"], "device": "cpu"}
    params["prompts"]["generators"] = {"gpt": {"backend": "openai", "model": "gpt-4o-mini"}}  # the file written above
    return tmp_path, params


def _feature_files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted((root / "data/features").rglob("*")) if p.is_file()}


def test_truncated_feature_cache_files_are_discarded_and_recomputed(features_workspace, capsys):
    from cater.stages import features as stage

    root, params = features_workspace
    stage.run(params, None)
    first = _feature_files(root)
    cached_video = sorted((root / "data/.cache/features").glob("*/video/*.npy"))
    cached_text = sorted((root / "data/.cache/features").glob("*/pooled/*.npz"))
    assert len(cached_video) == 3 and cached_text
    for path in (cached_video[0], cached_text[0]):  # a kill -9 mid-write on a file system without atomic rename
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    capsys.readouterr()
    stage.run(params, None)
    out = capsys.readouterr().out
    for path in (cached_video[0], cached_text[0]):
        assert f"{path.relative_to(root)}: corrupt cache file" in out and "recomputed" in out
    assert _feature_files(root) == first  # recomputed, the same output


def test_a_damaged_feature_file_is_named(features_workspace):
    from cater.features import CachedFeatures
    from cater.stages import features as stage

    root, params = features_workspace
    stage.run(params, None)
    target = root / "data/features/video/000000.safetensors"
    target.write_bytes(target.read_bytes()[:200])
    features = CachedFeatures(root / "data/features")  # lazy: the shard is opened by the first read
    with pytest.raises(ValueError, match=r"data/features/video/000000\.safetensors: feature shard damaged.*dvc checkout data/features"):
        features.video([0])


# --- frames output and cache ---------------------------------------------------------------------------


def test_damaged_frames_output_is_named_with_the_fix(tmp_path):
    folder = tmp_path / "frames"
    folder.mkdir()
    np.save(folder / "a.npy", np.zeros((4, 8, 8, 3), np.uint8))
    np.save(folder / "b.npy", np.zeros((4, 8, 8), np.float32))
    (folder / "index.json").write_text(json.dumps({v: {"file": f"{v}.npy", "times": [0, 1, 2, 3], "num_frames": 4} for v in "ab"}))
    store = FrameStore(folder)
    assert store.load("a").shape == (4, 8, 8, 3)
    (folder / "a.npy").write_bytes((folder / "a.npy").read_bytes()[:-10])
    for video_id, detail in (("a", "truncated"), ("b", "expected uint8")):
        with pytest.raises(ValueError, match=rf"a?b?\.npy: frames of video '{video_id}' are damaged \(.*{detail}.*dvc checkout data/frames"):
            store.load(video_id)
        with pytest.raises(ValueError, match="are damaged"):
            store.load(video_id, mmap=True)


def test_a_truncated_frame_cache_file_is_discarded_and_decoded_again(shapes_set, tmp_path, monkeypatch, capsys):
    import cater.stages.frames as stage

    monkeypatch.chdir(tmp_path)
    (tmp_path / "data" / "raw").mkdir(parents=True)
    (tmp_path / "data" / "raw" / "set").symlink_to(shapes_set.root, target_is_directory=True)
    samples = [Sample(**{**s.__dict__, "video": str(Path("data/raw/set") / Path(s.video).relative_to(shapes_set.root))})
               for s in shapes_set.samples]
    write_samples(tmp_path / "data/samples.jsonl", samples)
    params = {"frames": {"num_frames": 8, "size": 32, "workers": 1, "skip_bad": False}}
    stage.run(params, None)
    first = {p.name: p.read_bytes() for p in (tmp_path / "data/frames").iterdir()}
    [cache_file, *_] = sorted((tmp_path / "data/.cache/frames").glob("*/*.np[yz]"))
    cache_file.write_bytes(cache_file.read_bytes()[:1000])  # the file the old code copied into data/frames
    capsys.readouterr()
    stage.run(params, None)
    assert f"{cache_file.relative_to(tmp_path)}: corrupt cache file" in capsys.readouterr().out
    assert {p.name: p.read_bytes() for p in (tmp_path / "data/frames").iterdir()} == first


# --- splits --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("missing,labelled,expected", [
    ("test", True, "the test split has no samples"),
    ("val", False, "the val split has no labelled samples"),
])
def test_an_empty_split_fails_at_the_splits_stage_and_writes_nothing(tmp_path, monkeypatch, missing, labelled, expected):
    import cater.stages.splits as stage

    monkeypatch.chdir(tmp_path)
    samples = [_sample("v1", "train"), _sample("v2", "val", 0 if labelled else None), _sample("v3", "test")]
    samples = [s for s in samples if s.split != missing] if missing == "test" else samples
    write_samples(tmp_path / "data/samples.jsonl", samples)
    (tmp_path / "data/frames").mkdir()
    (tmp_path / "data/frames/index.json").write_text(json.dumps({s.video_id: {} for s in samples}))
    with pytest.raises(ValueError, match=expected):
        stage.run({"splits": {"train_n": None, "val_n": None, "test_n": None, "seed": 0}}, None)
    assert not (tmp_path / "data/splits").exists()
    # an unlabelled test split (TVQA's test_public) is fine
    write_samples(tmp_path / "data/samples.jsonl", [_sample("v1", "train"), _sample("v2", "val"), _sample("v3", "test", None)])
    (tmp_path / "data/frames/index.json").write_text(json.dumps({v: {} for v in ("v1", "v2", "v3")}))
    stage.run({"splits": {"train_n": None, "val_n": None, "test_n": None, "seed": 0}}, None)
    assert (tmp_path / "data/splits/test.jsonl").exists()


def test_a_removed_generators_leftover_prompts_file_is_ignored(features_workspace):
    """DVC leaves the file of a generator removed from params in data/prompts; features reads the declared ones."""
    from cater.features import CachedFeatures
    from cater.stages import features as stage

    root, params = features_workspace
    write_jsonl(root / "data/prompts/old.jsonl", [_prompt_row("v1")])  # covers 1 of 3 videos: an error if read
    stage.run(params, None)
    assert sorted(CachedFeatures(root / "data/features").index["prompts"]) == ["gpt"]
