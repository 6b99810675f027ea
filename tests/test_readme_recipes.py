"""The README's dataset recipes, run as written.

Every ```yaml block of README.md that follows a `<!-- recipe: NAME -->` line is a user's params edit:
its `dataset:` section replaces the one in params.yaml and its other keys are set one by one. Each runs
under real `dvc` through `dataset`, `frames` and `splits` on a release laid out as the block's comment
says (tests/helpers/official_layouts.py: the official file formats, real videos or frame folders), linked
in as data/raw/<name>. A recipe that names a wrong folder, key or split mapping fails here.
"""
from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import json
import re
from pathlib import Path

import pytest
import yaml

from cater.data.schema import read_samples
from helpers import official_layouts
from helpers.dvc_workspace import REPO, make_workspace, run, set_params

pytestmark = pytest.mark.slow

RECIPE = re.compile(r"^<!-- recipe: (?P<name>[^>]+?) -->\n```yaml\n(?P<body>.*?)^```", re.MULTILINE | re.DOTALL)
LAYOUTS = {  # recipe -> how its release is laid out (the block's comment)
    "msrvtt_qa": lambda root: official_layouts.write_msrvtt_qa(root),
    "msvd_qa": lambda root: official_layouts.write_msvd_qa(root),
    "activitynet_qa": lambda root: official_layouts.write_activitynet_qa(root),
    "tvqa": lambda root: official_layouts.write_tvqa(root, frames=True),
    "tvqa, val as test": lambda root: official_layouts.write_tvqa(root, frames=True),
}


def readme_recipes() -> dict[str, dict]:
    recipes = {m["name"]: yaml.safe_load(m["body"]) for m in RECIPE.finditer((REPO / "README.md").read_text(encoding="utf-8"))}
    return recipes


def test_the_readme_has_a_recipe_per_dataset_and_each_is_tested():
    recipes = readme_recipes()
    assert set(recipes) == set(LAYOUTS)
    for name, recipe in recipes.items():
        assert recipe["dataset"]["name"] == name.split(",")[0]
        paths = [v for k, v in recipe["dataset"].items() if k in ("annotations", "videos", "frames_dir", "subtitles", "video_mapping")]
        assert paths and all(p.startswith(f"data/raw/{recipe['dataset']['name']}/") for p in paths)


@pytest.fixture(scope="module")
def shared_workspace(tmp_path_factory) -> tuple[Path, str]:
    root = make_workspace(tmp_path_factory.mktemp("recipes"), {"frames.num_frames": 4})
    return root, (root / "params.yaml").read_text(encoding="utf-8")


@pytest.fixture
def workspace(shared_workspace) -> Path:
    """One DVC workspace for every recipe (its setup is the slow part), with params.yaml back to the workspace's
    own before each: a key one recipe sets (say `splits.val_from_train`) never leaks into the next."""
    root, pristine = shared_workspace
    (root / "params.yaml").write_text(pristine, encoding="utf-8")
    return root


def apply_recipe(root: Path, recipe: dict) -> None:
    overrides = {"dataset": recipe["dataset"]}  # the whole section: the demo's shapes block goes
    for section, values in recipe.items():
        if section != "dataset":
            overrides.update({f"{section}.{key}": value for key, value in values.items()})
    set_params(root / "params.yaml", overrides)


def link_release(root: Path, name: str, release: Path) -> None:
    link = root / "data/raw" / name
    link.parent.mkdir(parents=True, exist_ok=True)
    if link.is_symlink():
        link.unlink()
    link.symlink_to(release.resolve(), target_is_directory=True)


def official_counts(release: Path, name: str) -> dict[str, int]:
    """Questions per official split, counted from the release's annotation files."""
    ann = release / "annotations"
    if name == "tvqa":
        return {split: len((ann / f"tvqa_{split}.jsonl").read_text().splitlines()) for split in ("train", "val", "test_public")}
    suffix = "_q.json" if name == "activitynet_qa" else "_qa.json"
    return {split: len(json.loads((ann / f"{split}{suffix}").read_text())) for split in ("train", "val", "test")}


@pytest.mark.parametrize("recipe_name", sorted(LAYOUTS))
def test_a_readme_recipe_runs_as_written(workspace, shared_workspace, tmp_path, recipe_name):
    recipe = readme_recipes()[recipe_name]
    name = recipe["dataset"]["name"]
    release = tmp_path / name
    LAYOUTS[recipe_name](release)
    link_release(workspace, name, release)
    apply_recipe(workspace, recipe)
    params = yaml.safe_load((workspace / "params.yaml").read_text(encoding="utf-8"))
    for section, values in recipe.items():  # exactly the recipe's keys changed, nothing left from another recipe
        if section == "dataset":
            assert params["dataset"] == values
        else:
            pristine = yaml.safe_load(shared_workspace[1])[section]
            assert params[section] == {**pristine, **values}
    result = run(["dvc", "repro", "splits"], workspace)
    assert "Running stage 'splits'" in result.stdout

    samples = read_samples(workspace / "data/samples.jsonl")
    assert {s.dataset for s in samples} == {name}
    counts = official_counts(release, name)
    splits = {split: read_samples(workspace / f"data/splits/{split}.jsonl") for split in ("train", "val", "test")}
    if recipe_name == "tvqa, val as test":
        assert len(splits["test"]) == counts["val"] and all(s.answer_idx is not None for s in splits["test"])
        assert splits["val"] and len(splits["train"]) + len(splits["val"]) == counts["train"]
        assert not {s.video_id for s in splits["train"]} & {s.video_id for s in splits["val"]}  # whole clips held out
        assert all(s.subtitles is not None for split in splits.values() for s in split)
    else:
        official = list(counts.values())
        assert [len(splits[split]) for split in ("train", "val", "test")] == official
        if name == "tvqa":
            assert all(s.answer_idx is None for s in splits["test"])  # test_public: unlabelled
            assert any(s.subtitles for s in splits["train"])
