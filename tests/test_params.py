"""params.yaml validation: the repository's file passes; every mistake names its key."""
from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from cater.config import ConfigError, load_params

REPO_PARAMS = Path(__file__).resolve().parents[1] / "params.yaml"


@pytest.fixture(scope="module")
def params() -> dict:
    return load_params(REPO_PARAMS)


def write(tmp_path: Path, params: dict) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


def edited(params: dict, dotted: str, value=None, delete: bool = False) -> dict:
    out = copy.deepcopy(params)
    *parents, last = dotted.split(".")
    node = out
    for key in parents:
        node = node[key]
    if delete:
        del node[last]
    else:
        node[last] = value
    return out


def test_repository_params_pass(params):
    for section in ("dataset", "frames", "splits", "prompts", "teacher", "features", "train"):
        assert section in params
    assert params["train"]["teacher"] in params["teacher"]["models"]


def test_round_trip_through_a_file_passes(params, tmp_path):
    assert load_params(write(tmp_path, params)) == params


@pytest.mark.parametrize("dotted", ["frames.numframes", "train.distill.temprature", "train.student.layers", "bogus"])
def test_unknown_key(params, tmp_path, dotted):
    path = write(tmp_path, edited(params, dotted, 1))
    with pytest.raises(ConfigError) as info:
        load_params(path)
    message = str(info.value)
    assert str(path) in message and dotted.split(".")[-1] in message
    if "." in dotted:
        assert f"{dotted}: unknown key" in message


@pytest.mark.parametrize("dotted, value", [
    ("frames.num_frames", "eight"),
    ("frames.skip_bad", "no"),
    ("train.lr", "fast"),
    ("train.epochs", 3.5),
    ("train.epochs", True),
    ("train.distill.temperature", None),
    ("splits.train_n", "all"),
    ("train.student", 4),
])
def test_wrong_type(params, tmp_path, dotted, value):
    with pytest.raises(ConfigError, match=rf"{dotted}\b.*(expected|must be a mapping)"):
        load_params(write(tmp_path, edited(params, dotted, value)))


@pytest.mark.parametrize("dotted, value", [
    ("train.prompt_variant", "events"),
    ("train.distill.mode", "medium"),
    ("train.choice_text", "both"),
    ("train.student.frame_pool", "max"),
    ("train.mixed_precision", "fp8"),
])
def test_bad_choice(params, tmp_path, dotted, value):
    with pytest.raises(ConfigError, match=rf"{dotted} is '{value}', expected one of"):
        load_params(write(tmp_path, edited(params, dotted, value)))


def test_teacher_must_be_a_configured_model(params, tmp_path):
    with pytest.raises(ConfigError, match=r"train\.teacher 'gpt5v' is not in teacher\.models"):
        load_params(write(tmp_path, edited(params, "train.teacher", "gpt5v")))


def test_prompt_generator_must_be_configured(params, tmp_path):
    with pytest.raises(ConfigError, match=r"train\.prompt_generator 'nobody' is not in prompts\.generators"):
        load_params(write(tmp_path, edited(params, "train.prompt_generator", "nobody")))


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_params(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_params(bad)
    listed = tmp_path / "list.yaml"
    listed.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_params(listed)



def test_missing_section_is_an_error(params, tmp_path):
    with pytest.raises(ConfigError, match="frames"):
        load_params(write(tmp_path, edited(params, "frames", delete=True)))


@pytest.mark.parametrize("section,key", [("prompts", "generators"), ("teacher", "models")])
@pytest.mark.parametrize("name", ["..", "../../outside", ".hidden", "a/b"])
def test_names_that_become_paths_are_validated(params, tmp_path, section, key, name):
    """prompts.generators and teacher.models keys name folders and files (data/prompts/<name>.jsonl, ...)."""
    entries = dict(params[section][key])
    entries[name] = next(iter(entries.values()))
    with pytest.raises(ConfigError) as info:
        load_params(write(tmp_path, edited(params, f"{section}.{key}", entries)))
    message = str(info.value)
    assert message.startswith(f"{tmp_path / 'params.yaml'}: {section}.{key}: ") and repr(name) in message, message


@pytest.mark.parametrize("dotted", ["train.teacher", "train.prompt_generator"])
def test_train_names_that_become_paths_are_validated(params, tmp_path, dotted):
    only_train = {"train": edited(params, dotted, "../x")["train"]}  # no generators / models to compare with
    with pytest.raises(ConfigError) as info:
        load_params(write(tmp_path, only_train), required=("train",))
    assert f"{dotted}: " in str(info.value) and "'../x'" in str(info.value), str(info.value)


@pytest.mark.parametrize("stage", ["dataset", "frames", "splits", "prompts", "teacher", "features", "train", "eval"])
def test_every_stage_help_names_its_own_command(stage, capsys):
    import importlib

    from cater.cli import STAGES

    with pytest.raises(SystemExit) as exit_info:
        importlib.import_module(STAGES[stage]).main(["--help"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: cater {stage} ")
