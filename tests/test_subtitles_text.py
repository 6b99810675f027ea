"""Subtitles in the student's own text (`train.choice_text: qa_subtitles`): the features stage embeds each choice
string followed by the sample's subtitles, cut at the text encoder's context after the question and the choice."""
from __future__ import annotations

import json

import pytest
import torch

from cater.config import load_params
from cater.data.schema import read_samples, write_samples
from cater.features import CachedFeatures, qa_string, qa_subtitles_string
from helpers.features_inputs import write_features_inputs
from helpers.dvc_workspace import REPO

LONG_SUBTITLES = "\n".join(f"(Sheldon:) line {i} of a long scene about the blue door and the red box." for i in range(12))


def test_the_subtitles_follow_the_choice_string():
    assert qa_subtitles_string("Who left?", "Penny", "(Leonard:) Bye.\n(Penny:)  See you.") == \
        "Who left? answer: Penny subtitles: (Leonard:) Bye. (Penny:) See you."
    assert qa_subtitles_string("Who left?", "Penny", None) == qa_string("Who left?", "Penny")
    assert qa_subtitles_string("Who left?", "Penny", " \n ") == qa_string("Who left?", "Penny")


@pytest.fixture
def subtitled_features(tmp_path, monkeypatch, capsys):
    """The features stage over three one-question videos: v1 with long subtitles, v2 without, v3 with short ones."""
    from cater.stages import features as stage

    monkeypatch.chdir(tmp_path)
    write_features_inputs(tmp_path, size=32)
    for split, subtitles in (("train", LONG_SUBTITLES), ("val", None), ("test", "(Penny:) Hi.")):
        path = tmp_path / f"data/splits/{split}.jsonl"
        samples = read_samples(path)
        for s in samples:
            s.subtitles = subtitles
        write_samples(path, samples)
    params = load_params(REPO / "params.yaml")
    params["frames"]["num_frames"] = 4
    params["features"] = {**params["features"], "device": "cpu"}
    params["prompts"]["generators"] = {"gpt": {"backend": "openai", "model": "gpt-4o-mini"}}
    capsys.readouterr()
    stage.run(params, None)  # the long subtitles exceed cater-tiny's 32 tokens: cut, not an error
    return tmp_path, capsys.readouterr().out


def test_the_features_stage_embeds_qa_plus_subtitles_and_cuts_only_the_subtitles(subtitled_features):
    root, out = subtitled_features
    assert "2 of 4 qa + subtitles text(s) are cut at the text encoder's 32 tokens" in out
    index = json.loads((root / "data/features/index.json").read_text())
    strings = json.loads((root / "data/features/strings.json").read_text())["pooled"]
    v1, v2, v3 = (index["samples"][f"{v}-q"] for v in ("v1", "v2", "v3"))
    assert v2["qa_subtitles"] == v2["qa"]  # no subtitles: the qa string itself
    for ids in (v1, v3):
        assert all(a != b for a, b in zip(ids["qa_subtitles"], ids["qa"]))
        for qa, with_subs in zip(ids["qa"], ids["qa_subtitles"]):
            assert strings[with_subs].startswith(strings[qa] + " subtitles: ")
    assert strings[v3["qa_subtitles"][0]] == "What moved? answer: a circle subtitles: (Penny:) Hi."

    # the cut keeps the choice: the long text's vector is that of its first 32 tokens, and it differs from qa's
    from cater.models.backbone import BackboneSpec, FrozenBackbone
    backbone = FrozenBackbone(BackboneSpec("cater-tiny"))
    features = CachedFeatures(root / "data/features")
    stored = features.pooled(torch.tensor(v1["qa_subtitles"])).float()
    long_text = strings[v1["qa_subtitles"][0]]
    ids = backbone.tokenizer([long_text])[0]
    assert int(ids[-1]) == int(ids.max())  # cut at the context: end-of-text moved to the last position
    qa_ids = backbone.tokenizer([strings[v1["qa"][0]]])[0]
    kept = int((qa_ids != 0).sum()) - 1  # the qa string's tokens, end-of-text excluded
    assert ids[:kept].tolist() == qa_ids[:kept].tolist()  # the question and the choice are kept whole
    assert int(ids.argmax()) == backbone.context_length - 1 > kept
    assert torch.allclose(stored[0], backbone.text_features([long_text])[0][0].half().float(), atol=1e-3)
    assert not torch.allclose(stored[0], features.pooled(torch.tensor(v1["qa"])).float()[0], atol=1e-2)


def test_train_reads_the_subtitled_choice_texts_and_refuses_them_without_subtitles(subtitled_features):
    from cater.train import SplitTensors, TrainConfig

    root, _ = subtitled_features
    features = CachedFeatures(root / "data/features")
    train = read_samples(root / "data/splits/train.jsonl")
    index = features.index["samples"]["v1-q"]
    for choice_text in ("qa", "qa_subtitles", "answer"):
        split = SplitTensors(train, features, TrainConfig(choice_text=choice_text, prompt_variant="none"), None, None)
        assert split.choice_ids[0, :2].tolist() == index[choice_text]

    stripped = json.loads((root / "data/features/index.json").read_text())
    for ids in stripped["samples"].values():
        del ids["qa_subtitles"]
    (root / "data/features/index.json").write_text(json.dumps(stripped))  # a store from a dataset without subtitles
    with pytest.raises(ValueError, match=r"train.choice_text: qa_subtitles: the features store has no such texts.*TVQA"):
        SplitTensors(train, CachedFeatures(root / "data/features"), TrainConfig(choice_text="qa_subtitles",
                                                                               prompt_variant="none"), None, None)


def test_a_dataset_whose_subtitle_windows_are_all_empty_still_gets_qa_subtitles(tmp_path, monkeypatch):
    """TVQA with dataset.subtitles set, every question window without a line: `qa_subtitles` exists (equal to qa),
    so the subtitles ablation group, enabled by dataset.subtitles, never fails in train."""
    from cater.stages.features import collect_strings

    monkeypatch.chdir(tmp_path)
    write_features_inputs(tmp_path, size=32)
    samples = read_samples(tmp_path / "data/splits/train.jsonl")
    for s in samples:
        s.subtitles = ""
    per_sample = collect_strings(samples, {}, 4)[2]
    assert all(ids["qa_subtitles"] == ids["qa"] for ids in per_sample.values())
    for s in samples:
        s.subtitles = None  # a dataset without subtitles: no such texts
    assert all("qa_subtitles" not in ids for ids in collect_strings(samples, {}, 4)[2].values())
