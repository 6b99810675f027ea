"""The seed repository's JSONL format: the dataset adapter, the `given` prompts, the `seed_jsonl` teacher, and
a `dvc repro` of this project's pipeline on a seed user's files (frames as image files, prompts and teacher
outputs inside the rows), trained with the seed's own recipe (hard + embedding MSE)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cater.data.adapters import AdapterError
from cater.data.seed_jsonl import load
from cater.prompts.base import PromptError, PromptRequest
from cater.prompts.given import GivenBackend
from cater.teachers.base import TeacherConfig, TeacherError, TeacherInput

COLORS = ["red", "green", "blue", "yellow", "purple", "orange"]
NUM_FRAMES = 4
EMBED_DIM = 64  # cater-tiny's width: the seed writes teacher_embedding at the student's d_model


def write_seed_release(root: Path, videos: dict[str, int] | None = None, per_question_prompts: bool = False) -> Path:
    """A seed checkout's data layout: data/msrvtt_frames/video<N>/frame_XX.png and data/jsonl/{split}.jsonl,
    two questions per video; frame paths relative to the checkout root, as the seed's scripts write them."""
    from PIL import Image

    videos = videos or {"train": 10, "val": 5, "test": 5}
    rng = np.random.default_rng(0)
    (root / "data/jsonl").mkdir(parents=True, exist_ok=True)
    n = 0
    for split, count in videos.items():
        lines = []
        for v in range(count):
            folder = f"data/msrvtt_frames/video{n}"
            (root / folder).mkdir(parents=True)
            color = n % len(COLORS)
            paths = []
            for f in range(NUM_FRAMES):
                pixels = np.zeros((32, 32, 3), np.uint8)
                pixels[..., color % 3] = 60 + 30 * color
                pixels[8 * (f % 4): 8 * (f % 4) + 8] = rng.integers(0, 255, 3)
                path = f"{folder}/frame_{f:02d}.png"
                Image.fromarray(pixels).save(root / path)
                paths.append(path)
            for q in range(2):
                choices = [COLORS[(color + k) % len(COLORS)] for k in range(5)]
                answer = (n + q) % 5
                choices[0], choices[answer] = choices[answer], choices[0]
                row_id = 2 * v + q  # the seed's toy ids restart at 0 in every file
                prompts = [f"A {COLORS[color]} frame {f}." + (f" (q{q})" if per_question_prompts else "") for f in range(3)]
                embedding = rng.normal(size=EMBED_DIM)
                lines.append(json.dumps({
                    "id": row_id, "dataset": "msrvtt_qa", "video_id": n, "question": "What colour is the video?",
                    "choices": choices, "answer_idx": answer, "event_prompts": prompts, "frame_prompts": prompts,
                    "frame_paths": paths, "teacher_hard_idx": answer if (n + q) % 3 else (answer + 1) % 5,
                    "teacher_embedding": (embedding / np.linalg.norm(embedding)).tolist(),
                }))
            n += 1
        (root / f"data/jsonl/{split}.jsonl").write_text("\n".join(lines) + "\n")
    return root


def cfg_for(root: Path, **extra) -> dict:
    return {"name": "seed_jsonl", "annotations": str(root / "data/jsonl"), "frames_root": str(root), **extra}


def test_adapter_reads_the_seed_rows(tmp_path):
    root = write_seed_release(tmp_path)
    samples = load(cfg_for(root))
    assert len(samples) == 40 and {s.split for s in samples} == {"train", "val", "test"}
    first = next(s for s in samples if s.id == "val-0")  # ids are <split>-<id>: the seed's restart per file
    assert first.video == str(root / "data/msrvtt_frames/video10") and first.video_id == first.video
    assert first.given_prompts == {"event": ["A purple frame 0.", "A purple frame 1.", "A purple frame 2."],
                                   "frame": ["A purple frame 0.", "A purple frame 1.", "A purple frame 2."]}
    assert first.question_type == "what" and first.answer_idx == 0
    assert len({s.video_id for s in samples}) == 20  # two questions per video, same prompts: one video


def test_rows_with_per_question_prompts_become_their_own_videos(tmp_path):
    from cater.data.registry import adapter_stats

    samples = load(cfg_for(write_seed_release(tmp_path, per_question_prompts=True)))
    assert len({s.video_id for s in samples}) == 40
    assert {s.video for s in samples if s.id in ("train-0", "train-1")} == {str(tmp_path / "data/msrvtt_frames/video0")}
    assert adapter_stats("seed_jsonl")["per_row_videos"] == 40
    assert adapter_stats("seed_jsonl")["frames_per_row"].startswith("4 ")


def _rewrite(path: Path, line: int, **changes) -> None:
    lines = path.read_text().splitlines()
    record = json.loads(lines[line - 1])
    for key, value in changes.items():
        if value is None:
            record.pop(key, None)
        else:
            record[key] = value
    lines[line - 1] = json.dumps(record)
    path.write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize("changes, message", [
    ({"frame_paths": None, "action_id": 3}, "train.jsonl:3: field 'frame_paths' is missing or empty (and no toy"),
    ({"answer_idx": 7}, "train.jsonl:3: field 'answer_idx' is 7, out of range for 5 choices"),
    ({"frame_paths": ["/abs/frame_00.png"]}, "train.jsonl:3: frame path '/abs/frame_00.png' must be relative"),
    ({"frame_paths": ["data/msrvtt_frames/video0/frame_00.png", "data/msrvtt_frames/video1/frame_00.png"]},
     "train.jsonl:3: frame_paths span 2 folders"),
    ({"frame_paths": ["data/msrvtt_frames/video1/frame_09.png"]}, "train.jsonl:3: frame "),
    ({"event_prompts": "one string"}, "train.jsonl:3: field 'event_prompts' must be a non-empty list of strings"),
    ({"id": 0}, "train.jsonl:3: duplicate id 'train-0'"),
    ({"frame_paths": ["data/msrvtt_frames/video1/frame_00.png"]},  # the other row of video1 lists all 4 frames
     "train.jsonl:4: frame_paths list other images of"),
])
def test_bad_rows_fail_naming_file_line_and_field(tmp_path, changes, message):
    root = write_seed_release(tmp_path)
    _rewrite(root / "data/jsonl/train.jsonl", 3, **changes)
    with pytest.raises(AdapterError, match=None) as info:
        load(cfg_for(root))
    assert message in str(info.value)


def test_a_folder_with_images_the_rows_do_not_list_is_an_error(tmp_path):
    from PIL import Image

    root = write_seed_release(tmp_path)
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(root / "data/msrvtt_frames/video2/frame_99.png")
    with pytest.raises(AdapterError, match=r"train.jsonl:5: frame_paths list 4 of the 5 images in .*video2 "
                                           r"\(not listed: frame_99.png\)"):
        load(cfg_for(root))


def test_splits_mapping_names_other_files(tmp_path):
    root = write_seed_release(tmp_path, {"train": 3, "val": 2, "test": 2})
    (root / "data/jsonl/test.jsonl").rename(root / "data/jsonl/test_public.jsonl")
    samples = load(cfg_for(root, splits={"train": "train.jsonl", "val": "val.jsonl", "test": "test_public.jsonl"}))
    assert sum(s.split == "test" for s in samples) == 4
    with pytest.raises(AdapterError, match="splits.test must be a file name inside"):
        load(cfg_for(root, splits={"train": "train.jsonl", "test": "../test.jsonl"}))


def test_given_backend_maps_the_seed_way_and_never_fills_a_gap():
    frames = np.zeros((NUM_FRAMES, 8, 8, 3), np.uint8)
    times = [0.0, 1.0, 2.0, 3.0]
    request = PromptRequest("v", frames, times, given_prompts={"event": ["a.", "b.", "c."]})
    result = GivenBackend().generate([request])[0]
    assert [e["text"] for e in result.events] == ["a.", "b.", "c.", "c."]  # padded with the last, one per frame
    assert [(e["start_frame"], e["end_frame"]) for e in result.events] == [(0, 0), (1, 1), (2, 2), (3, 3)]
    assert result.frames == ["a.", "b.", "c.", "c."]  # no frame prompts: the event sentences (the seed's fallback)
    long = PromptRequest("v", frames, times, given_prompts={"event": list("abcdef"), "frame": list("wxyz")})
    result = GivenBackend().generate([long])[0]
    assert [e["text"] for e in result.events] == list("abcd") and result.frames == list("wxyz")
    spread = GivenBackend(mapping="spread").generate([request])[0]
    assert [(e["start_frame"], e["end_frame"]) for e in spread.events] == [(0, 0), (1, 1), (2, 3)]
    assert isinstance(GivenBackend().generate([PromptRequest("v", frames, times)])[0], PromptError)
    with pytest.raises(ValueError, match="mapping must be one of"):
        GivenBackend(mapping="first")


def _teacher(root: Path):
    from cater.teachers.seed_jsonl import SeedJsonlTeacher

    return SeedJsonlTeacher(TeacherConfig(family="seed_jsonl", model=str(root / "data/jsonl")))


def test_teacher_reads_choice_and_embedding_by_sample_id(tmp_path):
    root = write_seed_release(tmp_path, {"train": 2, "val": 1, "test": 1})
    samples = {s.id: s for s in load(cfg_for(root))}
    teacher = _teacher(root)
    rows = [json.loads(line) for line in (root / "data/jsonl/train.jsonl").read_text().splitlines()]
    items = [TeacherInput(sid, np.zeros((1, 2, 2, 3), np.uint8), s.question, s.choices) for sid, s in samples.items()]
    outputs = {o.id: o for o in teacher.score(items)}
    out = outputs["train-1"]
    assert out.hard_idx == rows[1]["teacher_hard_idx"] and out.choice_only
    assert np.argmax(out.choice_logits) == out.hard_idx and sorted(out.choice_logits)[:4] == [-100.0] * 4
    np.testing.assert_allclose(out.hidden, rows[1]["teacher_embedding"], rtol=1e-6)
    assert len(outputs) == 8 and all(o.hard_idx is not None and o.projected for o in outputs.values())


def test_teacher_row_digest_follows_its_teacher_fields(tmp_path):
    root = write_seed_release(tmp_path, {"train": 2, "val": 1, "test": 1})
    before = _teacher(root).sample_source("train-1")
    assert before == _teacher(root).sample_source("train-1") and before != _teacher(root).sample_source("train-2")
    rows = [json.loads(line) for line in (root / "data/jsonl/train.jsonl").read_text().splitlines()]
    _rewrite(root / "data/jsonl/train.jsonl", 2, teacher_hard_idx=(rows[1]["teacher_hard_idx"] + 1) % 5)  # same size
    assert _teacher(root).sample_source("train-1") != before  # a cached row for the old choice is not reused


def test_teacher_rows_without_a_choice_are_missing_and_foreign_rows_fail(tmp_path):
    root = write_seed_release(tmp_path, {"train": 2, "val": 1, "test": 1})
    _rewrite(root / "data/jsonl/train.jsonl", 1, teacher_hard_idx=-1)
    teacher = _teacher(root)
    sample = load(cfg_for(root))[0]
    item = TeacherInput(sample.id, np.zeros((1, 2, 2, 3), np.uint8), sample.question, sample.choices)
    out = teacher.score([item])[0]
    assert out.choice_logits is None and out.missing_reason == "no teacher_hard_idx in the seed JSONL"
    with pytest.raises(TeacherError, match="sample test-99 is not in the seed JSONL files"):
        teacher.score([TeacherInput("test-99", item.frames, "q", ["a", "b"])])
    with pytest.raises(TeacherError, match="train.jsonl:1: the choices differ"):
        teacher.score([TeacherInput(sample.id, item.frames, sample.question, ["x", "y"])])
    _rewrite(root / "data/jsonl/train.jsonl", 2, teacher_hard_idx=9)
    other = load(cfg_for(root))[1]
    with pytest.raises(TeacherError, match="train.jsonl:2: field 'teacher_hard_idx' is 9"):
        _teacher(root).score([TeacherInput(other.id, item.frames, other.question, other.choices)])


@pytest.mark.slow
def test_dvc_repro_runs_a_seed_users_files_with_the_seed_recipe(tmp_path):
    from helpers.dvc_workspace import link_dataset, make_workspace, run, set_params

    release = write_seed_release(tmp_path / "seed", per_question_prompts=True)  # the seed's MSRVTT rows: prompts per question
    root = make_workspace(tmp_path, {
        "frames.num_frames": NUM_FRAMES,
        "prompts.generators": {"seed": {"backend": "given"}},
        "teacher.models": {"seed": {"family": "seed_jsonl", "model": "data/raw/seed_jsonl/data/jsonl"}},
        "train.prompt_generator": "seed",
        "train.teacher": "seed",
        "train.distill": {"mode": "hard", "hard_weight": 0.5, "embed_weight": 0.4},  # the seed's hybrid
    })
    set_params(root / "params.yaml", {"dataset": link_dataset(root, cfg_for(release), release)})
    result = run(["dvc", "repro"], root)
    assert "dataset seed_jsonl: samples 40, videos 40, per_row_videos 40, frames_per_row 4" in result.stdout
    # 40 prompt sets, one per question, over 20 folders: each folder decoded, stored and embedded once
    assert "frames: 40 videos (20 sharing another id's frames)" in result.stdout
    index = json.loads((root / "data/features/index.json").read_text())
    assert len(index["video_ids"]) == 20 and len(index["video_aliases"]) == 20
    assert len(list((root / "data/frames").glob("*.npz"))) == 20
    prompts = {row["video_id"]: row for row in map(json.loads, (root / "data/prompts/seed.jsonl").read_text().splitlines())}
    first = prompts["data/raw/seed_jsonl/data/msrvtt_frames/video0#train-1"]
    assert len(prompts) == 40 and first["frames"] == ["A red frame 0. (q1)", "A red frame 1. (q1)", "A red frame 2. (q1)",
                                                     "A red frame 2. (q1)"]
    summary = json.loads((root / "data/teacher/seed/summary.json").read_text())
    assert summary["missing"] == 0 and summary["splits"]["test"]["accuracy"] == pytest.approx(7 / 10)  # wrong where (n + q) % 3 == 0: 15, 18, 18
    train_metrics = json.loads((root / "metrics/train/metrics.json").read_text())
    assert train_metrics["loss"]["embed"] > 0 and train_metrics["loss"]["hard"] > 0
    stage_metrics = json.loads((root / "metrics/eval.json").read_text())["test"]
    assert stage_metrics["n"] == 10
    # any checkpoint on any split file: the stage's own checkpoint and test file give the stage's numbers
    run(["cater", "eval", "--checkpoint", "models/student.safetensors", "--split-file", "data/splits/test.jsonl",
         "--out", str(tmp_path / "again.json")], root)
    again = json.loads((tmp_path / "again.json").read_text())["metrics"]
    assert again == stage_metrics  # accuracy, CI, baselines, per type
    lines = (root / "data/splits/test.jsonl").read_text().splitlines()
    (tmp_path / "subset.jsonl").write_text("\n".join(lines[:4]) + "\n")
    subset = run(["cater", "eval", "--checkpoint", "models/student.safetensors", "--split-file", str(tmp_path / "subset.jsonl"),
                  "--out", str(tmp_path / "subset.json")], root)
    assert json.loads((tmp_path / "subset.json").read_text())["metrics"]["n"] == 4 and "on 4 questions" in subset.stdout
    from cater.train import load_student, save_student

    _, checkpoint = load_student(root / "models/student.safetensors")
    checkpoint["features"]["backbone"]["seed"] = 99  # as if trained on another backbone of the same width
    save_student(checkpoint, tmp_path / "other.safetensors")
    other = run(["cater", "eval", "--checkpoint", str(tmp_path / "other.safetensors")], root, check=False)
    assert other.returncode == 1 and "trained on other features" in other.stderr
    foreign = json.loads(lines[0]) | {"id": "test-999"}
    (tmp_path / "foreign.jsonl").write_text(json.dumps(foreign) + "\n")
    refused = run(["cater", "eval", "--split-file", str(tmp_path / "foreign.jsonl")], root, check=False)
    assert refused.returncode == 1 and "1 of 1 questions are not in data/features (first: test-999)" in refused.stderr
    set_params(root / "params.yaml", {"train.distill": {"mode": "hybrid"}})
    failed = run(["dvc", "repro", "train"], root, check=False)
    assert failed.returncode != 0 and "the teacher gives only its choice" in failed.stdout + failed.stderr


def write_seed_toy_release(root: Path, sizes: dict[str, int], dim: int = EMBED_DIM) -> Path:
    """Rows in the schema of the seed's make_toy_data.py (ids restart per file; frames drawn from action_id and
    frame_seed; teacher_embedding at d_model), written by this test's own generator."""
    actions = ["opening a door", "sitting on a chair", "drinking water", "reading a book", "running outside", "lifting a box"]
    rng = np.random.default_rng(1)
    (root / "toy").mkdir(parents=True)
    for split, n in sizes.items():
        lines = []
        for i in range(n):
            action = int(rng.integers(len(actions)))
            choices = [actions[(action + k) % len(actions)] for k in range(5)]
            answer = int(rng.integers(5))
            choices[0], choices[answer] = choices[answer], choices[0]
            embedding = rng.normal(size=dim)
            lines.append(json.dumps({
                "id": i, "dataset": "toy", "action_id": action, "question": "What is the main event in this video?",
                "choices": choices, "answer_idx": answer, "teacher_hard_idx": answer if i % 10 else (answer + 1) % 5,
                "event_prompts": [f"The person is {actions[action]} and step {t}." for t in range(6)],
                "frame_prompts": [f"A frame shows a person {actions[action]}." for _ in range(6)],
                "teacher_embedding": (embedding / np.linalg.norm(embedding)).tolist(),
                "frame_seed": int(rng.integers(1, 1_000_000))}))
        (root / "toy" / f"{split}.jsonl").write_text("\n".join(lines) + "\n")
    return root / "toy"


def test_toy_rows_get_this_projects_rendered_frames(tmp_path, monkeypatch):
    from cater.data.registry import adapter_stats
    from cater.data.seed_jsonl import TOY_FRAMES, render_toy_video

    folder = write_seed_toy_release(tmp_path, {"train": 6, "val": 2, "test": 2})
    samples = load({"name": "seed_jsonl", "annotations": str(folder)})
    stats = adapter_stats("seed_jsonl")
    assert len(samples) == 10 and stats["toy_videos"] == len({s.video for s in samples}) == len(stats["toy_render"])
    first = samples[0]
    assert first.video.startswith("data/videos/seed_toy/action") and first.given_prompts["event"][0].startswith("The person is")
    action, seed = stats["toy_render"][first.video]
    render_toy_video(tmp_path / "a", action, seed)
    render_toy_video(tmp_path / "b", action, seed)
    render_toy_video(tmp_path / "c", (action + 1) % 6, seed)
    a, b, c = ([np.asarray(Image.open(p)) for p in sorted((tmp_path / d).glob("*.png"))] for d in "abc")
    assert len(a) == TOY_FRAMES and all(np.array_equal(x, y) for x, y in zip(a, b))  # deterministic
    assert not np.array_equal(a[0], a[-1])  # the block moves
    assert abs(a[0].mean(axis=(0, 1)) - c[0].mean(axis=(0, 1))).max() > 10  # another action, another colour


@pytest.mark.slow
def test_dvc_repro_runs_the_seeds_toy_format(tmp_path):
    from helpers.dvc_workspace import link_dataset, make_workspace, run, set_params

    folder = write_seed_toy_release(tmp_path / "seed", {"train": 40, "val": 10, "test": 10})
    root = make_workspace(tmp_path, {
        "frames.num_frames": 6,
        "prompts.generators": {"seed": {"backend": "given"}},
        "teacher.models": {"seed": {"family": "seed_jsonl", "model": "data/raw/seed_jsonl"}},
        "train.prompt_generator": "seed",
        "train.teacher": "seed",
        "train.distill": {"mode": "hard", "hard_weight": 0.5, "embed_weight": 0.4},
    })
    set_params(root / "params.yaml", {"dataset": link_dataset(root, {"name": "seed_jsonl", "annotations": str(folder)}, folder)})
    result = run(["dvc", "repro"], root)
    assert "dataset seed_jsonl: samples 60" in result.stdout and "toy_videos" in result.stdout
    assert len(list((root / "data/videos/seed_toy").glob("*/frame_*.png"))) % 8 == 0
    summary = json.loads((root / "data/teacher/seed/summary.json").read_text())
    assert summary["missing"] == 0 and summary["splits"]["test"]["accuracy"] == pytest.approx(0.9)  # id 0 is off
    metrics = json.loads((root / "metrics/eval.json").read_text())
    assert metrics["test"]["n"] == 10 and json.loads((root / "metrics/train/metrics.json").read_text())["loss"]["embed"] > 0
