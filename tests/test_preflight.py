"""Preflight: every kind of problem is found, counted, and named (sample id and file)."""
from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from cater.data.registry import ADAPTERS  # noqa: E402
from cater.data.frames import decode_video  # noqa: E402
from cater.data.preflight import CHECKS, PreflightError, preflight  # noqa: E402
from cater.data.schema import Sample  # noqa: E402

from helpers.official_layouts import write_activitynet_qa, write_msvd_qa, write_tvqa  # noqa: E402


def _sample(video: Path, n: int, **fields) -> Sample:
    base = dict(id=f"s{n}", dataset="t", split="train", video=str(video), video_id=video.stem,
                question=f"what is {n}?", choices=["a", "b", "c"], answer_idx=1, question_type="what")
    return Sample(**{**base, **fields})


@pytest.fixture()
def videos(tmp_path) -> list[Path]:
    paths = []
    for i in range(3):
        path = tmp_path / f"v{i}.mp4"
        path.write_bytes(b"\x00" * 64)
        paths.append(path)
    return paths


def test_clean_samples_pass(videos):
    samples = [_sample(videos[i % 3], i) for i in range(6)]
    report = preflight(samples)
    assert report["ok"] and report["problems"] == []
    assert report["num_samples"] == 6 and report["num_videos"] == 3
    assert set(report["counts"]) == set(CHECKS) and not any(report["counts"].values())


def test_every_problem_is_reported(videos, tmp_path):
    videos[1].write_bytes(b"")  # zero-length
    empty_frames = tmp_path / "frames_empty"
    empty_frames.mkdir()
    samples = [
        _sample(videos[0], 0),
        _sample(tmp_path / "gone.mp4", 1),  # missing
        _sample(tmp_path / "gone.mp4", 2),  # same missing file, second sample
        _sample(videos[1], 3),  # unreadable
        _sample(empty_frames, 4),  # unreadable frame folder
        _sample(videos[2], 5, question="   "),
        _sample(videos[2], 6, answer_idx=3),  # out of range
        _sample(videos[2], 7, answer_idx=None),  # unlabelled outside test
        _sample(videos[2], 8, choices=["a", "A ", "b"], answer_idx=0),  # answer text twice
        _sample(videos[2], 9, choices=["only"], answer_idx=0),
        _sample(videos[2], 5),  # duplicate id s5
        _sample(videos[0], 10, video_id="v2"),  # video_id v2 already points at videos[2]
        _sample(videos[2], 11, split="test", answer_idx=None),  # fine: unlabelled test
    ]
    report = preflight(samples, raise_on_error=False, join={"prompts": ["s0", "s1", "zz"]}, max_listed=100)
    assert not report["ok"]
    counts = report["counts"]
    assert counts["missing_video"] == 2
    assert counts["unreadable_video"] == 2
    assert counts["empty_question"] == 1
    assert counts["answer_missing"] == 3
    assert counts["bad_choices"] == 1
    assert counts["duplicate_id"] == 1
    assert counts["video_id_conflict"] == 1
    # 12 distinct sample ids, 10 of them without a prompts row, plus the orphan row "zz"
    assert counts["id_not_joined"] == 10 + 1
    assert len(report["problems"]) == sum(counts.values()) == 22
    found = {(p["check"], p["id"]) for p in report["problems"]}
    assert {("unreadable_video", "s3"), ("missing_video", "s2"), ("id_not_joined", "zz"), ("id_not_joined", "s11"),
            ("empty_question", "s5"), ("bad_choices", "s9"), ("video_id_conflict", "s10")} <= found
    assert ("id_not_joined", "s0") not in found
    assert {i for c, i in found if c == "answer_missing"} == {"s6", "s7", "s8"}
    details = {p["id"]: p["detail"] for p in report["problems"] if p["check"] in ("missing_video", "unreadable_video")}
    assert details["s1"] == f"{tmp_path / 'gone.mp4'}: not found"
    assert details["s3"] == f"{videos[1]}: zero-length file"
    assert details["s4"] == f"{empty_frames}: frame folder holds no images"


def test_raises_listing_the_first_problems(videos, tmp_path):
    samples = [_sample(tmp_path / f"missing{i}.mp4", i) for i in range(30)]
    with pytest.raises(PreflightError) as info:
        preflight(samples, source="data/samples.jsonl", max_listed=5)
    message = str(info.value)
    assert message.startswith("data/samples.jsonl: preflight found 30 problem(s) in 30 samples (30 missing_video):")
    assert f"missing_video: s0: {tmp_path / 'missing0.mp4'}: not found" in message
    assert len(re.findall(r"^  missing_video:", message, flags=re.M)) == 5
    assert message.endswith("... and 25 more")
    assert info.value.report["counts"]["missing_video"] == 30


def test_check_videos_off_skips_file_checks(tmp_path):
    samples = [_sample(tmp_path / "missing.mp4", 0)]
    assert preflight(samples, check_videos=False)["ok"]


def test_adapter_output_with_deleted_videos(tmp_path):
    """The usual flow: adapters parse without checking videos; preflight then finds what is missing."""
    cfg = write_activitynet_qa(tmp_path)
    samples = ADAPTERS["activitynet_qa"](cfg)
    assert preflight(samples)["ok"]
    (Path(cfg["videos"]) / "v_tEsT-vid_02.mp4").unlink()
    (Path(cfg["videos"]) / "v_VaL_vid-001.mp4").write_bytes(b"")
    report = preflight(samples, raise_on_error=False)
    assert report["counts"]["missing_video"] == 10 and report["counts"]["unreadable_video"] == 10
    assert {p["id"].split("-v_")[1].rsplit("_", 1)[0] for p in report["problems"]} == {"tEsT-vid_02", "VaL_vid-001"}


def test_layout_media_decode(tmp_path):
    """The helper layouts hold real, decodable media (mp4, avi, frame folders)."""
    samples = ADAPTERS["msvd_qa"](write_msvd_qa(tmp_path / "msvd"))[:1] + ADAPTERS["tvqa"](write_tvqa(tmp_path / "tv"))[:1]
    assert samples[0].video.endswith(".avi") and samples[1].start == 0.5
    for sample in samples:
        frames, times = decode_video(sample.video, 4, 32, sample.start, sample.end)
        assert frames.shape == (4, 32, 32, 3) and frames.std() > 0
    frames_cfg = write_tvqa(tmp_path / "tvf", frames=True)
    sample = ADAPTERS["tvqa"](frames_cfg)[0]
    frames, times = decode_video(sample.video, 3, 32)
    assert frames.shape == (3, 32, 32, 3)
    assert preflight(ADAPTERS["tvqa"](frames_cfg))["ok"]
