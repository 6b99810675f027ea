"""The distillation objective: none / hard / soft / hybrid and the alignment term."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from cater.distill import DistillationLoss, DistillConfig

B, C = 4, 5


def batch(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    choice_mask = torch.ones(B, C, dtype=torch.bool)
    choice_mask[1, 3:] = False  # 3 choices
    choice_mask[3, 2:] = False  # 2 choices
    logits = (torch.randn(B, C, generator=g) * 3).masked_fill(~choice_mask, -1e9)  # as the student emits them
    teacher = torch.randn(B, C, generator=g) * 3
    teacher[~choice_mask] = 0.0  # padding, as SplitTensors stores it
    return {
        "logits": logits.requires_grad_(),
        "labels": torch.tensor([0, 2, 4, 1]),
        "choice_mask": choice_mask,
        "teacher_logits": teacher,
        "teacher_valid": torch.tensor([True, True, False, True]),
    }


def loss_fn(mode: str, **options) -> DistillationLoss:
    return DistillationLoss(DistillConfig(mode=mode, **options))


def call(loss: DistillationLoss, b: dict, **overrides):
    b = {**b, **overrides}
    return loss(b["logits"], b["labels"], b["choice_mask"], b["teacher_logits"], b["teacher_valid"],
                b.get("video"), b.get("teacher_hidden"))


def test_none_is_plain_cross_entropy():
    b = batch()
    total, parts = call(loss_fn("none", label_weight=1.0), b)
    torch.testing.assert_close(total, F.cross_entropy(b["logits"], b["labels"]))
    assert set(parts) == {"label"}
    # teacher inputs are not even looked at
    total_without, _ = loss_fn("none").forward(b["logits"], b["labels"], b["choice_mask"])
    torch.testing.assert_close(total_without, total)


def test_hard_uses_the_teacher_argmax_on_valid_samples_only():
    b = batch()
    _, parts = call(loss_fn("hard"), b)
    valid = b["teacher_valid"]
    target = b["teacher_logits"].masked_fill(~b["choice_mask"], -1e9).argmax(1)
    expected = F.cross_entropy(b["logits"][valid], target[valid])
    assert parts["hard"] == pytest.approx(expected.item(), rel=1e-6)
    total, _ = call(loss_fn("hard", label_weight=1.0, hard_weight=0.5), b)
    assert total.item() == pytest.approx(parts["label"] + 0.5 * parts["hard"], rel=1e-6)


def test_hard_never_picks_a_padded_choice():
    b = batch()
    b["teacher_logits"][3, :2] = torch.tensor([-4.0, -1.0])  # real choices all below the padding's 0
    b["logits"] = torch.tensor([[0.0] * C] * B).masked_fill(~b["choice_mask"], -1e9)
    b["logits"][3, 1] = 3.0  # the student agrees with the teacher's real choice 1
    one = {k: (v[3:] if v.dim() else v) for k, v in b.items()}
    _, parts = call(loss_fn("hard"), one)
    assert parts["hard"] == pytest.approx(F.cross_entropy(one["logits"], torch.tensor([1])).item(), rel=1e-6)
    assert parts["hard"] < 0.2


@pytest.mark.parametrize("mode", ["hard", "soft", "hybrid"])
def test_all_invalid_teachers_equal_mode_none(mode):
    b = batch()
    b["teacher_valid"] = torch.zeros(B, dtype=torch.bool)
    b["teacher_logits"] = b["labels"].new_zeros(B, C).float()
    b["teacher_logits"][torch.arange(B), (b["labels"] + 1) % 2] = 50.0  # a confident teacher that must be ignored
    total, parts = call(loss_fn(mode), b)
    plain, _ = call(loss_fn("none"), b)
    torch.testing.assert_close(total, plain)
    assert all(parts[k] == 0.0 for k in parts if k != "label")
    # and no gradient comes from the teacher terms
    (grad,) = torch.autograd.grad(total, b["logits"])
    (grad_plain,) = torch.autograd.grad(plain, b["logits"])
    torch.testing.assert_close(grad, grad_plain)


def test_soft_is_zero_when_student_equals_teacher():
    b = batch()
    same = b["teacher_logits"].masked_fill(~b["choice_mask"], -1e9)
    _, parts = call(loss_fn("soft"), b, logits=same.clone().requires_grad_())
    assert abs(parts["soft"]) < 1e-6
    _, parts = call(loss_fn("soft"), b)
    assert parts["soft"] > 0.01


def manual_soft(b, T: float) -> float:
    mask, valid = b["choice_mask"], b["teacher_valid"]
    terms = []
    for i in range(B):
        if valid[i]:
            t = F.softmax(b["teacher_logits"][i][mask[i]] / T, dim=0)
            s = F.log_softmax(b["logits"][i][mask[i]].detach() / T, dim=0)
            terms.append(float((t * (t.log() - s)).sum()))
    return T * T * sum(terms) / len(terms)


@pytest.mark.parametrize("T", [0.5, 1.0, 2.0, 4.0])
def test_soft_is_t_squared_kl_over_real_choices(T):
    b = batch()
    _, parts = call(loss_fn("soft", temperature=T), b)
    assert parts["soft"] == pytest.approx(manual_soft(b, T), rel=1e-5)


def test_soft_t_squared_keeps_the_scale_at_high_temperature():
    b = batch()
    high = call(loss_fn("soft", temperature=50.0), b)[1]["soft"]
    higher = call(loss_fn("soft", temperature=100.0), b)[1]["soft"]
    assert higher == pytest.approx(high, rel=0.02)  # KL alone would shrink by 4x
    assert high > 1e-3


def test_padding_is_finite_and_ignored_in_forward_and_backward():
    b = batch()
    total, parts = call(loss_fn("hybrid"), b)
    assert torch.isfinite(total) and all(v == v for v in parts.values())
    (grad,) = torch.autograd.grad(total, b["logits"])
    assert torch.isfinite(grad).all()
    assert torch.all(grad[~b["choice_mask"]].abs() < 1e-12)
    # whatever sits in the teacher's padded slots changes nothing
    other = b["teacher_logits"].clone()
    other[~b["choice_mask"]] = 99.0
    total_other, _ = call(loss_fn("hybrid"), b, teacher_logits=other)
    torch.testing.assert_close(total_other, total)


def test_hybrid_is_the_weighted_sum():
    b = batch()
    total, parts = call(loss_fn("hybrid", label_weight=0.7, hard_weight=0.3, soft_weight=2.0), b)
    assert set(parts) == {"label", "hard", "soft"}
    assert total.item() == pytest.approx(0.7 * parts["label"] + 0.3 * parts["hard"] + 2.0 * parts["soft"], rel=1e-6)


def test_align_term_trains_its_projection():
    torch.manual_seed(0)
    loss = DistillationLoss(DistillConfig(mode="soft", align_weight=1.0), student_dim=8, teacher_dim=16)
    assert loss.align_proj is not None
    b = batch()
    video = torch.randn(B, 8)
    hidden = torch.randn(B, 16)
    optimizer = torch.optim.SGD(loss.parameters(), lr=0.5)
    history = []
    for _ in range(30):
        optimizer.zero_grad()
        total, parts = call(loss, b, logits=b["logits"].detach(), video=video, teacher_hidden=hidden)
        total.backward()
        history.append(parts["align"])
        assert loss.align_proj.weight.grad.abs().max() > 0 or parts["align"] < 1e-4
        optimizer.step()
    assert history[-1] < 0.5 * history[0]
    # a sample without a teacher hidden state contributes nothing to the alignment (its logits may be valid)
    one_off = hidden.clone()
    one_off[1] = torch.randn(16) * 100
    no_hidden = torch.tensor([True, False, True, True])
    align = lambda h: loss(b["logits"], b["labels"], b["choice_mask"], b["teacher_logits"], b["teacher_valid"],  # noqa: E731
                           video, h, teacher_hidden_valid=no_hidden)[1]["align"]
    assert align(one_off) == pytest.approx(align(hidden), rel=1e-6)


def test_no_align_projection_without_weight_or_in_mode_none():
    assert DistillationLoss(DistillConfig(mode="none", align_weight=1.0), 8, 16).align_proj is None
    assert DistillationLoss(DistillConfig(mode="soft", align_weight=0.0), 8, 16).align_proj is None
    assert DistillationLoss(DistillConfig(mode="soft", align_weight=1.0), 8, 0).align_proj is None


def test_config_checks():
    with pytest.raises(ValueError, match="train.distill"):
        DistillConfig(mode="dark")
    with pytest.raises(ValueError, match="temperature"):
        DistillConfig(temperature=0)


# --- embed: the seed repository's "soft" loss (MSE to a fixed projection of the teacher hidden state) ---------


def test_embed_is_the_mse_of_normalised_vectors_without_projection_at_equal_width():
    b = batch()
    g = torch.Generator().manual_seed(3)
    video, hidden = torch.randn(B, 8, generator=g), torch.randn(B, 8, generator=g)
    loss = DistillationLoss(DistillConfig(mode="hard", embed_weight=0.4), student_dim=8, teacher_dim=8)
    assert loss.embed_proj is None
    base, _ = DistillationLoss(DistillConfig(mode="hard"))(b["logits"], b["labels"], b["choice_mask"],
                                                           b["teacher_logits"], b["teacher_valid"])
    total, parts = call(loss, b, video=video, teacher_hidden=hidden)
    expected = F.mse_loss(F.normalize(video, dim=-1), F.normalize(hidden, dim=-1))  # the seed: mean over N x d
    assert parts["embed"] == pytest.approx(float(expected), rel=1e-6)
    assert float(total) == pytest.approx(float(base) + 0.4 * float(expected), rel=1e-6)


def test_embed_projection_is_fixed_seeded_and_not_trained():
    from cater.distill import fixed_projection

    torch.manual_seed(123)  # the global generator must not matter
    a = DistillationLoss(DistillConfig(mode="hybrid", embed_weight=1.0), 8, 32, "videollava")
    torch.manual_seed(456)
    b = DistillationLoss(DistillConfig(mode="hybrid", embed_weight=1.0), 8, 32, "videollava")
    assert torch.equal(a.embed_proj, b.embed_proj) and a.embed_proj.shape == (8, 32)
    assert list(a.parameters()) == []  # a buffer, not a trainable parameter
    other = DistillationLoss(DistillConfig(mode="hybrid", embed_weight=1.0, embed_seed=7), 8, 32, "videollava")
    assert not torch.equal(a.embed_proj, other.embed_proj)
    assert not torch.equal(a.embed_proj, fixed_projection(8, 32, 42, "flamingo"))
    # the seed repository's generator seed: seed + width * 997 + sha1(name)[:8] % 100003, Gaussian / sqrt(width)
    import hashlib
    name_hash = int.from_bytes(hashlib.sha1(b"videollava").digest()[:8], "big") % 100003
    expected = torch.randn(8, 32, generator=torch.Generator().manual_seed(42 + 32 * 997 + name_hash)) / 32 ** 0.5
    assert torch.equal(a.embed_proj, expected)


def test_embed_uses_the_projection_and_skips_samples_without_a_hidden_state():
    b = batch()
    g = torch.Generator().manual_seed(4)
    video, hidden = torch.randn(B, 8, generator=g), torch.randn(B, 32, generator=g)
    hidden[2] = float("nan")  # no usable hidden state: must not reach the loss or the gradient
    valid = torch.tensor([True, True, False, True])
    video.requires_grad_()
    loss = DistillationLoss(DistillConfig(mode="soft", embed_weight=1.0), 8, 32, "t")
    _, parts = loss(b["logits"], b["labels"], b["choice_mask"], b["teacher_logits"], b["teacher_valid"], video, hidden,
                    teacher_hidden_valid=valid)
    target = F.normalize(hidden[valid] @ loss.embed_proj.t(), dim=-1)
    expected = (F.normalize(video[valid], dim=-1) - target).pow(2).mean()
    assert parts["embed"] == pytest.approx(float(expected), rel=1e-6)
    total, _ = loss(b["logits"], b["labels"], b["choice_mask"], b["teacher_logits"], b["teacher_valid"], video, hidden,
                    teacher_hidden_valid=valid)
    total.backward()
    assert torch.isfinite(video.grad).all() and float(video.grad[2].abs().sum()) == 0.0


def test_no_embed_term_without_weight_or_in_mode_none():
    b = batch()
    video, hidden = torch.randn(B, 8), torch.randn(B, 8)
    for loss in (DistillationLoss(DistillConfig(mode="hybrid"), 8, 8),
                 DistillationLoss(DistillConfig(mode="none", embed_weight=1.0), 8, 8)):
        _, parts = call(loss, b, video=video, teacher_hidden=hidden)
        assert "embed" not in parts
