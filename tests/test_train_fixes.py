"""Correctness of the training recipe: half precision, weight-decay groups, teacher rows that do not fit,
non-finite teacher logits, and the alignment term masked by the presence of a teacher hidden state."""
from __future__ import annotations

import copy
import math
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import cater.train as train_module
from cater.data.schema import read_samples
from cater.distill import DistillationLoss, DistillConfig
from cater.features import CachedFeatures
from cater.io import encode_array, read_jsonl, write_jsonl
from cater.models.student import CaTeRStudent, StudentConfig
from cater.train import FeatureBatcher, SplitTensors, StudentWithLoss, load_teacher_outputs
from test_train_ddp import HIDDEN, build_cache, cache, config, one_thread  # noqa: F401 (fixtures)

B, T, P, L, C, D = 4, 4, 5, 6, 5, 32


def student_batch(seed: int = 0) -> dict[str, torch.Tensor]:
    """The student's and the loss's inputs, as FeatureBatcher gives them (float32)."""
    g = torch.Generator().manual_seed(seed)
    choice_mask = torch.ones(B, C, dtype=torch.bool)
    choice_mask[1, 3:] = False
    choice_mask[3, 2:] = False
    lengths = torch.randint(1, L + 1, (B, T), generator=g)
    teacher = torch.randn(B, C, generator=g) * 3
    teacher[~choice_mask] = 0.0
    return {
        "cls": torch.randn(B, T, D, generator=g),
        "patches": torch.randn(B, T, P, D, generator=g),
        "prompt_tokens": torch.randn(B, T, L, D, generator=g),
        "prompt_pad": torch.arange(L)[None, None] >= lengths[..., None],
        "has_prompt": torch.ones(B, T, dtype=torch.bool),
        "choices": torch.randn(B, C, D, generator=g),
        "choice_mask": choice_mask,
        "question": torch.randn(B, D, generator=g),
        "labels": torch.tensor([0, 2, 4, 1]),
        "teacher_logits": teacher,
        "teacher_valid": torch.tensor([True, True, False, True]),
        "teacher_hidden": torch.randn(B, HIDDEN, generator=g),
    }


def make_module(seed: int = 0, **student_options) -> StudentWithLoss:
    torch.manual_seed(seed)
    student = CaTeRStudent(StudentConfig(embed_dim=D, num_frames=T, **student_options))
    loss = DistillationLoss(DistillConfig(mode="hybrid", align_weight=0.5), D, HIDDEN)
    return StudentWithLoss(student, loss)


def as_half(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.half() if v.is_floating_point() else v for k, v in batch.items()}


# ---------------------------------------------------------------- 1. half precision


def test_student_and_loss_in_float16_are_finite_and_match_float32():
    module = make_module().eval()  # eval: no dropout, so both precisions compute the same function
    batch = student_batch()
    total32, parts32 = module(batch)
    half = copy.deepcopy(module).half()
    total16, parts16 = half(as_half(batch))
    assert torch.isfinite(total16)
    assert set(parts16) == set(parts32) == {"label", "hard", "soft", "align"}
    for key, value in parts16.items():
        assert math.isfinite(value), key
        assert value == pytest.approx(parts32[key], rel=3e-2, abs=3e-3), key
    assert total16.item() == pytest.approx(total32.item(), rel=3e-2)
    total16.backward()
    grads = [p.grad for p in half.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    # mixed precision as accelerate runs it: autocast around the forward pass
    for dtype in (torch.float16, torch.bfloat16):
        with torch.autocast("cpu", dtype=dtype):
            total, parts = module(batch)
        assert torch.isfinite(total) and total.item() == pytest.approx(total32.item(), rel=5e-2), dtype


def test_loss_on_half_logits_with_padding_matches_float32():
    batch = student_batch(1)
    mask = batch["choice_mask"]
    logits = (torch.randn(B, C, generator=torch.Generator().manual_seed(2)) * 3)
    logits16 = logits.half().masked_fill(~mask, torch.finfo(torch.float16).min)  # as the half student emits them
    logits32 = logits16.float().masked_fill(~mask, torch.finfo(torch.float32).min)
    for mode in ("hard", "soft", "hybrid"):
        loss = DistillationLoss(DistillConfig(mode=mode, temperature=0.5))
        total32, parts32 = loss(logits32, batch["labels"], mask, batch["teacher_logits"], batch["teacher_valid"])
        leaf = logits16.clone().requires_grad_()
        total16, parts16 = loss(leaf, batch["labels"], mask, batch["teacher_logits"].half(), batch["teacher_valid"])
        assert torch.isfinite(total16) and torch.isfinite(total32), mode
        for key in parts32:
            assert parts16[key] == pytest.approx(parts32[key], rel=1e-2, abs=1e-3), (mode, key)
        (grad,) = torch.autograd.grad(total16, leaf)
        assert torch.isfinite(grad).all() and torch.all(grad[~mask] == 0), mode


# ---------------------------------------------------------------- 2. weight decay groups


def split_by_group(module: nn.Module, groups: list[dict], weight_decay: float) -> tuple[set[str], set[str]]:
    names = {id(p): n for n, p in module.named_parameters()}
    seen = Counter(id(p) for g in groups for p in g["params"])
    assert set(seen) == set(names), "every parameter must be in a group"
    assert all(count == 1 for count in seen.values()), "a parameter is in more than one group"
    decay, no_decay = set(), set()
    for group in groups:
        assert group["weight_decay"] in (0.0, weight_decay)
        target = decay if group["weight_decay"] == weight_decay else no_decay
        target.update(names[id(p)] for p in group["params"])
    return decay, no_decay


def student_variants() -> list[dict]:
    fields = StudentConfig.__dataclass_fields__
    variants = [{"frame_pool": "attention", "question_conditioning": True, "text_head": True}]
    if "fusion" in fields:  # the gated fusion block is an option of the seed-faithful student
        variants.append({"fusion": "gated", "cross_layers": 2, "question_conditioning": True})
    return variants


@pytest.mark.parametrize("options", student_variants())
def test_no_weight_decay_on_scales_gates_embeddings_norms_and_biases(options):
    module = make_module(**options)
    groups = train_module.parameter_groups(module, 0.05)
    decay, no_decay = split_by_group(module, groups, 0.05)
    owners = {f"{m}.{n}" if m else n: type(mod) for m, mod in module.named_modules() for n, _ in mod.named_parameters(recurse=False)}
    expected_no_decay, expected_decay = set(), set()
    for name, param in module.named_parameters():
        leaf = name.rsplit(".", 1)[-1]
        if leaf.endswith("bias") or owners[name] is nn.LayerNorm or leaf in ("logit_scale", "gate", "time_embed", "query"):
            expected_no_decay.add(name)
        elif param.ndim == 2 and leaf in ("weight", "in_proj_weight"):
            expected_decay.add(name)
    assert expected_no_decay | expected_decay == {n for n, _ in module.named_parameters()}, "a parameter the test does not classify"
    assert no_decay == expected_no_decay
    assert decay == expected_decay
    assert {"student.logit_scale", "student.time_embed", "loss.align_proj.bias"} <= no_decay
    assert "loss.align_proj.weight" in decay
    assert any(n.endswith("attn.in_proj_weight") for n in decay) and any(n.endswith("attn.in_proj_bias") for n in no_decay)
    if options.get("frame_pool") == "attention":
        assert "student.pool.query" in no_decay
    gates = {n for n, _ in module.named_parameters() if n.endswith(".gate")}
    assert gates <= no_decay
    if options.get("fusion") == "gated" or "fusion" not in StudentConfig.__dataclass_fields__:
        assert gates  # this variant has gated fusion blocks
    torch.optim.AdamW(groups, lr=1e-3)  # a valid AdamW configuration


def test_parameter_groups_follow_ndim_and_name_fragments_not_exact_names():
    class Renamed(nn.Module):
        def __init__(self):
            super().__init__()
            self.time_pos = nn.Parameter(torch.zeros(1, 9, 8))
            self.query_tokens = nn.Parameter(torch.zeros(1, 4, 8))
            self.pos_embed = nn.Embedding(9, 8)
            self.fusion_norm = nn.LayerNorm(8)
            self.fusion_gate = nn.Parameter(torch.zeros(1))
            self.scale = nn.Parameter(torch.tensor(1.0))
            self.query_proj = nn.Linear(8, 8)  # a weight matrix, even though its module's name says "query"
            self.conv = nn.Conv1d(8, 8, 3)

    module = Renamed()
    decay, no_decay = split_by_group(module, train_module.parameter_groups(module, 0.1), 0.1)
    assert no_decay == {"time_pos", "query_tokens", "pos_embed.weight", "fusion_norm.weight", "fusion_norm.bias",
                        "fusion_gate", "scale", "query_proj.bias", "conv.bias"}
    assert decay == {"query_proj.weight", "conv.weight"}


def test_train_builds_adamw_with_the_groups(cache, monkeypatch):
    built = []

    class RecordingAdamW(torch.optim.AdamW):
        def __init__(self, params, *args, **kwargs):
            super().__init__(params, *args, **kwargs)
            built.append(self)

    monkeypatch.setattr(torch.optim, "AdamW", RecordingAdamW)
    cfg = config(epochs=1, weight_decay=0.07)
    features, train_split, val_split, batcher = prepare(cache, cfg)
    train_module.train(cfg, train_split, val_split, batcher, features)
    (optimizer,) = built
    decays = sorted(g["weight_decay"] for g in optimizer.param_groups)
    assert decays == [0.0, 0.07]
    no_decay = next(g for g in optimizer.param_groups if g["weight_decay"] == 0.0)
    assert all(p.ndim < 2 or p.shape[0] == 1 for p in no_decay["params"])


# ---------------------------------------------------------------- 3./4./5. teacher rows


def prepare(root: Path, cfg, teacher=None):
    features = CachedFeatures(root / "features")
    samples = {name: read_samples(root / f"{name}.jsonl") for name in ("train", "val")}
    teacher = teacher if teacher is not None else load_teacher_outputs(root / "teacher.jsonl")
    return (features, SplitTensors(samples["train"], features, cfg, teacher, None),
            SplitTensors(samples["val"], features, cfg, None, None), FeatureBatcher(features))


def write_rows(cache: Path, path: Path, edit) -> Path:
    rows = read_jsonl(cache / "teacher.jsonl")
    for row in rows:
        edit(row)
    write_jsonl(path, rows)
    return path


def three_choice_sample(cache: Path):
    teacher = load_teacher_outputs(cache / "teacher.jsonl")
    return next(s for s in read_samples(cache / "train.jsonl") if len(s.choices) == 3 and s.id in teacher)


@pytest.mark.parametrize("delta", [-1, 1])
def test_teacher_row_that_does_not_fit_the_sample_is_a_clear_error(cache, tmp_path, delta):
    sample = three_choice_sample(cache)

    def edit(row):
        if row["key"] == sample.id:
            row["choice_logits"] = [0.5] * (3 + delta)

    path = write_rows(cache, tmp_path / "outputs.jsonl", edit)
    teacher = load_teacher_outputs(path)
    with pytest.raises(ValueError) as info:
        prepare(cache, config(), teacher)
    message = str(info.value)
    assert str(path) in message and sample.id in message and "choice_logits" in message
    assert re.search(rf"\b{3 + delta}\b", message) and re.search(r"\b3\b", message)


def test_non_finite_teacher_logits_are_missing_and_training_stays_finite(cache, tmp_path):
    samples = read_samples(cache / "train.jsonl")
    teacher_ids = set(load_teacher_outputs(cache / "teacher.jsonl"))
    bad = {s.id: value for s, value in zip([s for s in samples if s.id in teacher_ids][:2], (float("nan"), float("inf")))}

    def edit(row):
        if row["key"] in bad:
            row["choice_logits"][1] = bad[row["key"]]

    path = write_rows(cache, tmp_path / "outputs.jsonl", edit)
    cfg = config(epochs=1)
    features, train_split, val_split, batcher = prepare(cache, cfg, load_teacher_outputs(path))
    rows = [train_split.ids.index(i) for i in bad]
    assert not train_split.teacher_valid[rows].any()
    assert train_split.nonfinite_teacher_rows == 2
    assert int(train_split.teacher_valid.sum()) == 23 - 2  # one sample had no row at all
    assert torch.isfinite(train_split.teacher_logits).all()
    assert train_split.teacher_hidden_valid[rows].all()  # their hidden states are still usable for align
    logged = []
    train_module.train(cfg, train_split, val_split, batcher, features, log=lambda epoch, m: logged.append(m))
    assert logged and all(math.isfinite(v) for m in logged for v in m.values()), logged


def test_stage_prints_the_non_finite_teacher_rows(cache, tmp_path, monkeypatch, capsys):
    import cater.stages.train as stage

    bad = three_choice_sample(cache).id

    def edit(row):
        if row["key"] == bad:
            row["choice_logits"][0] = float("nan")

    cfg = config()
    features, train_split, val_split, batcher = prepare(
        cache, cfg, load_teacher_outputs(write_rows(cache, tmp_path / "outputs.jsonl", edit)))
    monkeypatch.setattr(stage, "prepare", lambda params: (cfg, features, {"train": train_split, "val": val_split}, batcher))
    monkeypatch.setattr(stage, "train", lambda *a, **k: {"best_epoch": 0, "best_global_step": 3, "val_accuracy": 0.5, "model": {},
                                                          "student_config": {}, "train_config": {}})
    monkeypatch.chdir(tmp_path)
    stage.run({}, None)
    out = capsys.readouterr().out
    assert "usable outputs for 22/24 training samples" in out
    assert re.search(r"\b1 rows? with non-finite choice_logits", out), out


# ---------------------------------------------------------------- 5. align masked by hidden presence


def test_align_is_masked_by_the_presence_of_a_hidden_state():
    torch.manual_seed(0)
    loss = DistillationLoss(DistillConfig(mode="soft", align_weight=1.0), student_dim=8, teacher_dim=HIDDEN)
    b = student_batch()
    logits = (torch.randn(B, C) * 3).masked_fill(~b["choice_mask"], -1e9)
    video, hidden = torch.randn(B, 8), torch.randn(B, HIDDEN)
    teacher_valid = torch.tensor([True, True, False, True])
    hidden_valid = torch.tensor([True, False, True, True])  # 1: logits without hidden; 2: hidden without logits

    def align(hidden, hidden_valid=hidden_valid):
        _, parts = loss(logits, b["labels"], b["choice_mask"], b["teacher_logits"], teacher_valid, video, hidden,
                        teacher_hidden_valid=hidden_valid)
        return parts["align"]

    with torch.no_grad():
        cos = F.cosine_similarity(loss.align_proj(video), hidden, dim=-1)
    assert align(hidden) == pytest.approx(float((1 - cos)[hidden_valid].mean()), rel=1e-6)
    zeroed = hidden.clone()
    zeroed[1] = 0.0  # what SplitTensors stores for a sample without a hidden state
    assert align(zeroed) == pytest.approx(align(hidden), rel=1e-6)
    moved = hidden.clone()
    moved[2] = -moved[2]  # a sample with a hidden state but invalid logits still counts
    assert align(moved) != pytest.approx(align(hidden), rel=1e-3)
    # without the mask every given hidden state counts
    _, parts = loss(logits, b["labels"], b["choice_mask"], b["teacher_logits"], teacher_valid, video, hidden)
    assert parts["align"] == pytest.approx(float((1 - cos).mean()), rel=1e-6)


def test_split_tensors_mark_hidden_presence_and_the_batch_carries_it(cache, tmp_path):
    samples = read_samples(cache / "train.jsonl")
    no_hidden, nan_hidden = samples[3].id, samples[4].id

    def edit(row):
        if row["key"] == no_hidden:
            row["hidden"] = None
        if row["key"] == nan_hidden:
            row["hidden"] = encode_array(np.full(HIDDEN, np.nan, dtype=np.float16))

    cfg = config()
    features, train_split, _, batcher = prepare(cache, cfg, load_teacher_outputs(write_rows(cache, tmp_path / "o.jsonl", edit)))
    expected = torch.ones(len(samples), dtype=torch.bool)
    expected[[0, 3, 4]] = False  # sample 0 has no teacher row at all
    assert torch.equal(train_split.teacher_hidden_valid, expected)
    assert bool(train_split.teacher_valid[3]) and bool(train_split.teacher_valid[4])
    assert torch.all(train_split.teacher_hidden[[0, 3, 4]] == 0)
    rows = torch.arange(len(samples))
    batch = batcher(train_split, rows)
    assert torch.equal(batch["teacher_hidden_valid"], expected)
    torch.manual_seed(0)
    module = StudentWithLoss(train_module.build_student(cfg, features),
                             DistillationLoss(cfg.distill, features.embed_dim, HIDDEN)).eval()
    with torch.no_grad():
        _, parts = module(batch)
        _, video = module.student(batch["cls"], batch["patches"], batch["prompt_tokens"], batch["prompt_pad"],
                                  batch["has_prompt"], batch["choices"], batch["choice_mask"], batch["question"])
        cos = F.cosine_similarity(module.loss.align_proj(video), batch["teacher_hidden"], dim=-1)
    assert parts["align"] == pytest.approx(float((1 - cos)[expected].mean()), rel=1e-5)
