"""The resumable teacher runner and the `teacher` stage, on the tiny Video-LLaVA and a tiny frame store."""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import json
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from cater.data.frames import FrameStore
from cater.data.schema import Sample, read_samples, write_samples
from cater.io import decode_array
from cater.stages import teacher as stage
from cater.teachers.base import TeacherConfig, TeacherError, TeacherOutput
from cater.teachers.runner import ROW_FIELDS, output_row, score_samples
from cater.teachers.videollava import VideoLlavaTeacher
from cater.testing.tiny.videollava import write_tiny_videollava

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory) -> Path:
    return write_tiny_videollava(tmp_path_factory.mktemp("models") / "videollava", seed=0)


@pytest.fixture(scope="module")
def tiny_teacher(tiny_path):
    return VideoLlavaTeacher(TeacherConfig(family="videollava", model=str(tiny_path), device="cpu"))


def write_frames(directory: Path, video_ids: list[str], seed: int = 0, num_frames: int = 8) -> None:
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    index = {}
    for i, video_id in enumerate(video_ids):
        np.save(directory / f"v{i}.npy", rng.integers(0, 256, (num_frames, 32, 40, 3), dtype=np.uint8))
        index[video_id] = {"file": f"v{i}.npy", "times": [0.5 * t for t in range(num_frames)], "num_frames": num_frames}
    (directory / "index.json").write_text(json.dumps(index))


def make_samples(n: int, n_videos: int) -> list[Sample]:
    splits = ["train", "train", "val", "test"]
    return [
        Sample(id=f"q{i:03d}", dataset="demo", split=splits[i % 4], video=f"videos/v{i % n_videos}.mp4",
               question="What moved first" + "?" * (1 + i % 3), choices=["red", "blue", "green", "gray"][: 2 + i % 3],
               answer_idx=i % 2, question_type="order", video_id=f"vid{i % n_videos}")
        for i in range(n)
    ]


def make_project(root: Path, model: Path, n: int = 12, n_videos: int = 4, batch_size: int = 2) -> Path:
    samples = make_samples(n, n_videos)
    for split in ("train", "val", "test"):
        write_samples(root / "data/splits" / f"{split}.jsonl", [s for s in samples if s.split == split])
    write_frames(root / "data/frames", [f"vid{i}" for i in range(n_videos)])
    params = {"teacher": {"batch_size": batch_size, "models": {
        "videollava": {"family": "videollava", "model": str(model), "dtype": "fp32", "device": "cpu"}}}}
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    return root


def run_stage_in_process(root: Path, monkeypatch, name: str = "videollava") -> int:
    monkeypatch.chdir(root)
    return stage.main(["--name", name, "--no-progress"])


def stage_command(name: str = "videollava") -> list[str]:
    return [sys.executable, "-m", "cater.stages.teacher", "--name", name, "--no-progress"]


def subprocess_env() -> dict:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}


class CountingTeacher:
    """Wraps a teacher; counts scored samples and can fail after a number of batches (an interruption)."""

    def __init__(self, inner, fail_after_batches: int | None = None):
        self.inner, self.family = inner, inner.family
        self.fail_after, self.batches, self.scored = fail_after_batches, 0, 0

    def score(self, batch):
        if self.fail_after is not None and self.batches >= self.fail_after:
            raise KeyboardInterrupt("simulated interruption")
        self.batches += 1
        self.scored += len(batch)
        return self.inner.score(batch)


# -------------------------------------------------------------------------------------------- runner


def test_rows_are_complete_sorted_and_reused(tmp_path, tiny_teacher):
    samples = make_samples(7, 3)
    write_frames(tmp_path / "frames", ["vid0", "vid1", "vid2"])
    frames = FrameStore(tmp_path / "frames")
    counting = CountingTeacher(tiny_teacher)
    rows = score_samples(counting, samples, frames, tmp_path / "cache", {"v": 1}, batch_size=3, progress=False)
    assert [r["key"] for r in rows] == sorted(s.id for s in samples)
    assert counting.scored == 7 and counting.batches == 3
    for row, sample in zip(rows, sorted(samples, key=lambda s: s.id)):
        assert set(row) == set(ROW_FIELDS)
        assert len(row["choice_logits"]) == len(sample.choices)
        assert row["hard_idx"] == int(np.argmax(row["choice_logits"]))
        hidden = decode_array(row["hidden"])
        assert hidden.dtype == np.float16 and hidden.shape == (tiny_teacher.hidden_size,)

    again = CountingTeacher(tiny_teacher)
    assert score_samples(again, samples, frames, tmp_path / "cache", {"v": 1}, batch_size=3, progress=False) == rows
    assert again.scored == 0
    other_config = CountingTeacher(tiny_teacher)
    score_samples(other_config, samples, frames, tmp_path / "cache", {"v": 2}, batch_size=3, progress=False)
    assert other_config.scored == 7  # another config hash never reuses rows


def test_rows_are_read_from_the_store_one_at_a_time(tmp_path, tiny_teacher):
    """The assembled rows hold (file, offset) locations, not the rows: memory does not grow with the hidden
    states of the dataset (benchmarks/bench_teacher_rows.py); iterating, indexing and write_jsonl agree."""
    from cater.io import read_jsonl, write_jsonl

    samples = make_samples(5, 2)
    write_frames(tmp_path / "frames", ["vid0", "vid1"])
    rows = score_samples(tiny_teacher, samples, FrameStore(tmp_path / "frames"), tmp_path / "cache", {}, batch_size=2,
                         progress=False)
    assert all(isinstance(path, Path) and isinstance(offset, int) for path, offset in rows.locations.values())
    assert set(vars(rows)) == {"keys", "locations"}  # no row objects kept
    listed = list(rows)
    assert [rows[i] for i in range(len(rows))] == listed and rows[1:3] == listed[1:3]
    write_jsonl(tmp_path / "out.jsonl", rows)
    assert read_jsonl(tmp_path / "out.jsonl") == listed


def test_changed_question_is_rescored(tmp_path, tiny_teacher):
    samples = make_samples(4, 2)
    write_frames(tmp_path / "frames", ["vid0", "vid1"])
    frames = FrameStore(tmp_path / "frames")
    score_samples(tiny_teacher, samples, frames, tmp_path / "cache", {}, batch_size=2, progress=False)
    samples[3].question = "Which shape was largest?"
    counting = CountingTeacher(tiny_teacher)
    rows = score_samples(counting, samples, frames, tmp_path / "cache", {}, batch_size=2, progress=False)
    assert counting.batches == 1  # only the batch holding the changed sample
    fresh = score_samples(tiny_teacher, samples, frames, tmp_path / "fresh", {}, batch_size=2, progress=False)
    assert rows == fresh


def test_interrupted_runs_resume_to_identical_rows_and_torn_lines_are_dropped(tmp_path, tiny_teacher):
    samples = make_samples(9, 3)
    write_frames(tmp_path / "frames", ["vid0", "vid1", "vid2"])
    frames = FrameStore(tmp_path / "frames")
    reference = score_samples(tiny_teacher, samples, frames, tmp_path / "ref", {}, batch_size=2, progress=False)

    for fail_after in (1, 2):  # 1 batch, then 2 more: q000..q005 are stored
        with pytest.raises(KeyboardInterrupt):
            score_samples(CountingTeacher(tiny_teacher, fail_after), samples, frames, tmp_path / "cache", {},
                          batch_size=2, progress=False)
    rows_file = next((tmp_path / "cache").glob("*/rows-0.jsonl"))
    assert len(rows_file.read_text().splitlines()) == 6
    with rows_file.open("a") as handle:
        handle.write('{"key": "q007", "choice_logits": [0.1')  # a torn last line, as after a kill mid-write
    resumed = CountingTeacher(tiny_teacher)
    rows = score_samples(resumed, samples, frames, tmp_path / "cache", {}, batch_size=2, progress=False)
    assert resumed.scored == 3  # q006, q007 (one batch) and q008 (the last, short batch)
    assert rows == reference
    assert rows_file.read_text().endswith("\n") and len(rows_file.read_text().splitlines()) == 9


def test_runner_fails_early_on_missing_frames_and_too_many_options(tmp_path, tiny_teacher):
    write_frames(tmp_path / "frames", ["vid0"])
    frames = FrameStore(tmp_path / "frames")
    samples = make_samples(2, 2)  # q001 uses vid1, which has no frames
    counting = CountingTeacher(tiny_teacher)
    with pytest.raises(TeacherError, match="sample 'q001': no frames for video 'vid1'"):
        score_samples(counting, samples, frames, tmp_path / "cache", {}, batch_size=2, progress=False)
    samples = make_samples(1, 1)
    samples[0].choices = list("abcdef")
    with pytest.raises(TeacherError, match="sample 'q000': 6 choices"):
        score_samples(counting, samples, frames, tmp_path / "cache", {}, batch_size=2, progress=False)
    assert counting.scored == 0


# --------------------------------------------------------------------------------------------- stage


def test_stage_writes_outputs_and_summary(tmp_path, tiny_path, monkeypatch):
    root = make_project(tmp_path, tiny_path)
    assert run_stage_in_process(root, monkeypatch) == 0
    out = root / "data/teacher/videollava"
    rows = [json.loads(line) for line in (out / "outputs.jsonl").read_text().splitlines()]
    samples = {s.id: s for split in ("train", "val", "test") for s in read_samples(root / f"data/splits/{split}.jsonl")}
    assert [r["key"] for r in rows] == sorted(samples)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["samples"] == 12 and summary["missing"] == 0 and summary["missing_reasons"] == {}
    by_id = {r["key"]: r for r in rows}
    for split in ("train", "val", "test"):
        ids = [i for i, s in samples.items() if s.split == split]
        correct = sum(by_id[i]["hard_idx"] == samples[i].answer_idx for i in ids)
        assert summary["splits"][split]["samples"] == len(ids) == summary["splits"][split]["scored"]
        assert summary["splits"][split]["correct"] == correct
        assert summary["splits"][split]["accuracy"] == pytest.approx(correct / len(ids), abs=1e-6)
    assert list((root / "data/.cache/teacher/videollava").glob("*/rows-0.jsonl"))


def test_stage_output_does_not_depend_on_answers(tmp_path, tiny_path, monkeypatch):
    root = make_project(tmp_path / "a", tiny_path)
    assert run_stage_in_process(root, monkeypatch) == 0
    first = (root / "data/teacher/videollava/outputs.jsonl").read_bytes()
    shutil.rmtree(root / "data/.cache")
    for split in ("train", "val", "test"):
        path = root / f"data/splits/{split}.jsonl"
        flipped = read_samples(path)
        for s in flipped:
            s.answer_idx = len(s.choices) - 1 - s.answer_idx
        write_samples(path, flipped)
    assert run_stage_in_process(root, monkeypatch) == 0
    assert (root / "data/teacher/videollava/outputs.jsonl").read_bytes() == first


class DroppingTeacher:
    """The real tiny teacher, except that it reports one sample as unusable."""

    def __init__(self, inner, drop_id: str):
        self.inner, self.family, self.drop_id = inner, inner.family, drop_id

    def score(self, batch):
        outputs = self.inner.score(batch)
        return [TeacherOutput(o.id, None, None, None, "non-finite option logits") if o.id == self.drop_id else o
                for o in outputs]


def test_missing_outputs_are_kept_as_missing_rows_and_counted(tmp_path, tiny_path, tiny_teacher, monkeypatch):
    import cater.teachers.registry as registry

    root = make_project(tmp_path, tiny_path)
    monkeypatch.setattr(registry, "build_teacher", lambda config: DroppingTeacher(tiny_teacher, "q002"))
    assert run_stage_in_process(root, monkeypatch) == 0
    rows = {r["key"]: r for r in map(json.loads, (root / "data/teacher/videollava/outputs.jsonl").read_text().splitlines())}
    assert rows["q002"] == {"key": "q002", "choice_logits": None, "hard_idx": None, "hidden": None,
                            "missing_reason": "non-finite option logits"}
    summary = json.loads((root / "data/teacher/videollava/summary.json").read_text())
    assert summary["missing"] == 1 and summary["missing_reasons"] == {"non-finite option logits": 1}
    assert summary["splits"]["val"]["missing"] == 1 and summary["splits"]["val"]["scored"] == 2  # q002 is in val


def test_row_serialization_is_canonical():
    ok = output_row(TeacherOutput("c", [np.float32(0.1), 2.0, np.float32(1) / 3], 1, np.ones(4, np.float32)))
    assert json.dumps(ok["choice_logits"]) == "[0.1, 2.0, 0.33333334]"
    assert decode_array(ok["hidden"]).dtype == np.float16
    big = output_row(TeacherOutput("b", [0.5, 1.0], 1, np.full(4, 1e6, np.float32)))
    assert big["choice_logits"] is None and big["missing_reason"] == "hidden state overflows float16"


def edit_params(root: Path, **changes) -> None:
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["teacher"]["models"]["videollava"].update(changes)
    (root / "params.yaml").write_text(yaml.safe_dump(params))


def test_stage_missing_checkpoint_exits_nonzero_naming_it(tmp_path, tiny_path):
    root = make_project(tmp_path, tiny_path)
    edit_params(root, model=str(tmp_path / "models/absent"))
    done = subprocess.run(stage_command(), cwd=root, env=subprocess_env(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert "models/absent" in done.stderr and "checkpoint not found" in done.stderr
    assert not (root / "data/teacher/videollava/outputs.jsonl").exists()


def test_stage_wrong_family_fails(tmp_path, tiny_path, monkeypatch, capsys):
    root = make_project(tmp_path, tiny_path)
    (tmp_path / "llama").mkdir()
    (tmp_path / "llama/config.json").write_text('{"model_type": "llama"}')
    edit_params(root, model=str(tmp_path / "llama"))
    assert run_stage_in_process(root, monkeypatch) == 2
    assert f"{tmp_path / 'llama'}: model_type is 'llama'" in capsys.readouterr().err


def test_stage_too_many_options_fails_naming_the_file(tmp_path, tiny_path, monkeypatch, capsys):
    root = make_project(tmp_path, tiny_path)
    path = root / "data/splits/val.jsonl"
    samples = read_samples(path)
    samples[0].choices = ["a", "b", "c", "d", "e", "f"]
    write_samples(path, samples)
    assert run_stage_in_process(root, monkeypatch) == 2
    err = capsys.readouterr().err
    assert "data/splits/val.jsonl" in err and f"sample '{samples[0].id}': 6 choices" in err
    assert not (root / "data/teacher").exists()


def test_stage_sample_without_frames_fails_naming_the_file(tmp_path, tiny_path, monkeypatch, capsys):
    root = make_project(tmp_path, tiny_path)
    path = root / "data/splits/test.jsonl"
    samples = read_samples(path)
    samples[-1].video_id = "never-extracted"
    write_samples(path, samples)
    assert run_stage_in_process(root, monkeypatch) == 2
    err = capsys.readouterr().err
    assert "data/splits/test.jsonl" in err and "no frames for video 'never-extracted'" in err


def test_stage_unknown_teacher_name_fails(tmp_path, tiny_path, monkeypatch, capsys):
    root = make_project(tmp_path, tiny_path)
    assert run_stage_in_process(root, monkeypatch, name="gpt5") == 2
    assert "no teacher 'teacher.models.gpt5' (defined: videollava)" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["..", ".", "../x"])
def test_stage_teacher_names_that_leave_data_teacher_fail(tmp_path, monkeypatch, capsys, name):
    """`..` passed the old `[A-Za-z0-9_.-]+` check and made data/teacher/.. the output folder."""
    monkeypatch.chdir(tmp_path)
    assert stage.main(["--name", name, "--params", str(tmp_path / "params.yaml")]) == 2
    err = capsys.readouterr().err
    assert f"teacher name {name!r}" in err, err
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------ kills and several processes


def rows_on_disk(cache: Path) -> int:
    return sum(path.read_bytes().count(b"\n") for path in cache.glob("*/rows-*.jsonl"))


@pytest.mark.slow
def test_five_sigkills_then_resume_give_byte_identical_output(tmp_path, tiny_path, monkeypatch):
    n = 48
    reference_root = make_project(tmp_path / "ref", tiny_path, n=n, n_videos=5, batch_size=2)
    assert subprocess.run(stage_command(), cwd=reference_root, env=subprocess_env(), timeout=300).returncode == 0
    expected = (reference_root / "data/teacher/videollava/outputs.jsonl").read_bytes()

    root = make_project(tmp_path / "killed", tiny_path, n=n, n_videos=5, batch_size=2)
    cache = root / "data/.cache/teacher/videollava"
    rng = random.Random(1234)
    kills = 0
    while kills < 5:
        before = rows_on_disk(cache)
        target = rng.randint(before + 1, before + 6)  # kill once this many rows are stored (<= 36 of 48)
        proc = subprocess.Popen(stage_command(), cwd=root, env=subprocess_env(),
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 120
        while rows_on_disk(cache) < target and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.002)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
        assert not (root / "data/teacher/videollava/outputs.jsonl").exists()
        kills += 1
    assert rows_on_disk(cache) < n
    assert subprocess.run(stage_command(), cwd=root, env=subprocess_env(), timeout=300).returncode == 0
    assert (root / "data/teacher/videollava/outputs.jsonl").read_bytes() == expected
    assert (root / "data/teacher/videollava/summary.json").read_bytes() == \
        (reference_root / "data/teacher/videollava/summary.json").read_bytes()


@pytest.mark.slow
def test_two_cpu_processes_give_the_same_output_as_one(tmp_path, tiny_path):
    one = make_project(tmp_path / "one", tiny_path, n=12, n_videos=4, batch_size=2)
    two = make_project(tmp_path / "two", tiny_path, n=12, n_videos=4, batch_size=2)
    assert subprocess.run(stage_command(), cwd=one, env=subprocess_env(), timeout=300).returncode == 0
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    done = subprocess.run(torchrun + stage_command()[1:], cwd=two, env=subprocess_env(),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    out = "data/teacher/videollava/outputs.jsonl"
    assert (two / out).read_bytes() == (one / out).read_bytes()
    # the work was really shared: each rank wrote its own, disjoint part
    files = sorted((two / "data/.cache/teacher/videollava").glob("*/rows-*.jsonl"))
    assert [f.name for f in files] == ["rows-0.jsonl", "rows-1.jsonl"]
    keys = [{json.loads(line)["key"] for line in f.read_text().splitlines()} for f in files]
    assert keys[0] and keys[1] and not keys[0] & keys[1] and len(keys[0] | keys[1]) == 12
