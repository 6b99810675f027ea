"""The learning-rate schedule (seed: linear warmup, then cosine) and the label-scarce setting (train.label_fraction)."""
from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

import pytest
import torch

import cater.train as train_module
from cater.data.schema import read_samples
from cater.distill import DistillationLoss, DistillConfig
from cater.features import CachedFeatures
from cater.train import FeatureBatcher, SplitTensors, TrainConfig, labelled_subset, load_teacher_outputs, lr_factor
from test_train_ddp import build_cache, config


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("schedule")
    build_cache(root)
    return root


def test_lr_factor_warms_up_linearly_then_decays_by_cosine():
    total, fraction = 200, 0.05  # 10 warmup steps
    factors = [lr_factor(step, total, "warmup_cosine", fraction) for step in range(total)]
    assert factors[:10] == pytest.approx([(i + 1) / 10 for i in range(10)])
    assert factors[10] == pytest.approx(1.0)
    assert factors[10 + 95] == pytest.approx(0.5 * (1 + math.cos(math.pi * 95 / 190)))
    assert all(a >= b for a, b in zip(factors[10:], factors[11:]))  # monotone after warmup
    assert factors[-1] < 0.001
    assert {lr_factor(s, total, "constant", fraction) for s in range(total)} == {1.0}
    assert lr_factor(0, total, "warmup_cosine", 0.0) == pytest.approx(1.0)  # no warmup


def test_training_applies_the_schedule_per_optimizer_step(cache):
    cfg = config(epochs=3, lr=0.01, warmup_fraction=0.2)
    features = CachedFeatures(cache / "features")
    samples = {name: read_samples(cache / f"{name}.jsonl") for name in ("train", "val")}
    teacher = load_teacher_outputs(cache / "teacher.jsonl")
    train_split = SplitTensors(samples["train"], features, cfg, teacher, None)
    val_split = SplitTensors(samples["val"], features, cfg, None, None)
    logged = []
    train_module.train(cfg, train_split, val_split, FeatureBatcher(features), features, log=lambda e, m: logged.append(m))
    steps_per_epoch = math.ceil(len(train_split) / cfg.batch_size)
    total = cfg.epochs * steps_per_epoch
    expected = [cfg.lr * lr_factor(epoch * steps_per_epoch, total, "warmup_cosine", 0.2) for epoch in range(cfg.epochs)]
    assert [m["lr"] for m in logged] == pytest.approx(expected)


def test_labelled_subset_is_seeded_and_drawn_per_type(cache):
    samples = read_samples(cache / "train.jsonl")
    chosen = labelled_subset(samples, 0.25, seed=0)
    assert chosen == labelled_subset(samples, 0.25, seed=0)
    assert chosen != labelled_subset(samples, 0.25, seed=1)
    per_type = Counter(s.question_type for s in samples)
    picked = Counter(s.question_type for s in samples if s.id in chosen)
    assert picked == {t: max(1, round(0.25 * n)) for t, n in per_type.items()}
    assert labelled_subset(samples, 1.0, seed=0) == {s.id for s in samples}


def test_unlabelled_samples_get_no_label_term_but_keep_the_teacher(cache):
    cfg = config()
    features = CachedFeatures(cache / "features")
    samples = read_samples(cache / "train.jsonl")
    teacher = load_teacher_outputs(cache / "teacher.jsonl")
    keep = labelled_subset(samples, 0.25, seed=0)
    split = SplitTensors(samples, features, cfg, teacher, None, keep)
    labelled = split.labels >= 0
    assert int(labelled.sum()) == len(keep)
    assert {split.ids[i] for i in torch.nonzero(labelled).flatten().tolist()} == keep
    full = SplitTensors(samples, features, cfg, teacher, None)
    assert torch.equal(split.teacher_valid, full.teacher_valid)  # the teacher signal stays on every sample

    # the label term averages over the labelled samples only, and a batch without any label gives 0, not NaN
    logits = torch.randn(4, 5, requires_grad=True)
    mask = torch.ones(4, 5, dtype=torch.bool)
    loss = DistillationLoss(DistillConfig(mode="none"))
    labels = torch.tensor([2, -100, 4, -100])
    _, parts = loss(logits, labels, mask)
    expected = torch.nn.functional.cross_entropy(logits[[0, 2]], labels[[0, 2]])
    assert parts["label"] == pytest.approx(float(expected.detach()))
    total, parts = loss(logits, torch.full((4,), -100), mask)
    assert parts["label"] == 0.0 and torch.isfinite(total)


def test_bad_label_fraction_and_schedule_are_errors():
    with pytest.raises(ValueError, match="label_fraction"):
        TrainConfig(label_fraction=0.0)
    with pytest.raises(ValueError, match="label_fraction"):
        TrainConfig(label_fraction=1.5)
    with pytest.raises(ValueError, match="lr_schedule"):
        TrainConfig(lr_schedule="step")
    with pytest.raises(ValueError, match="warmup_fraction"):
        TrainConfig(warmup_fraction=1.0)


def test_loader_workers_give_the_same_training_as_the_main_process(cache):
    features = CachedFeatures(cache / "features")
    samples = {name: read_samples(cache / f"{name}.jsonl") for name in ("train", "val")}
    teacher = load_teacher_outputs(cache / "teacher.jsonl")
    results = []
    for workers in (0, 2):
        cfg = config(epochs=2, loader_workers=workers)
        train_split = SplitTensors(samples["train"], features, cfg, teacher, None)
        val_split = SplitTensors(samples["val"], features, cfg, None, None)
        results.append(train_module.train(cfg, train_split, val_split, FeatureBatcher(features), features))
    assert "loader_workers" not in results[1]["train_config"]  # how it ran, not what it computed: not in the checkpoint
    assert results[0]["model"].keys() == results[1]["model"].keys()
    assert all(torch.equal(results[0]["model"][k], results[1]["model"][k]) for k in results[0]["model"])
    with pytest.raises(ValueError, match="loader_workers"):
        config(loader_workers=-1)


def test_seed_embeddings_of_another_width_are_refused_not_projected_again(cache):
    from test_train_ddp import HIDDEN

    features = CachedFeatures(cache / "features")
    samples = {name: read_samples(cache / f"{name}.jsonl") for name in ("train", "val")}
    teacher = load_teacher_outputs(cache / "teacher.jsonl", keep_hidden=True)
    for row in teacher.values():
        row["projected"] = True  # as the seed_jsonl teacher marks its teacher_embedding rows
    cfg = config(epochs=1, distill={"mode": "hard", "embed_weight": 0.4})
    train_split = SplitTensors(samples["train"], features, cfg, teacher, None)
    val_split = SplitTensors(samples["val"], features, cfg, None, None)
    assert train_split.teacher_hidden_projected and HIDDEN != features.embed_dim
    with pytest.raises(ValueError, match=f"already projected to {HIDDEN} dimensions .* the student is {features.embed_dim} wide"):
        train_module.train(cfg, train_split, val_split, FeatureBatcher(features), features)
    for row in teacher.values():
        row.pop("projected")  # this project's own teachers: a hidden state of any width, projected by the embed term
    train_split = SplitTensors(samples["train"], features, cfg, teacher, None)
    result = train_module.train(cfg, train_split, val_split, FeatureBatcher(features), features, teacher_family="chatunivi")
    assert result["train_config"]["distill"]["embed_weight"] == 0.4
    from cater.train import seed_teacher_name

    assert seed_teacher_name("chatunivi") == "chatunivl" and seed_teacher_name("videollava") == "videollava"
