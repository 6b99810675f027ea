"""Chat-UniVi teacher: parity with the reference fixture, tiny checkpoint round trip, bad input."""
from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from cater.teachers.base import TeacherConfig, TeacherError, TeacherInput
from cater.teachers.chatunivi import (
    CONV_TEMPLATES,
    IMAGE_PLACEHOLDER,
    ChatUniViModel,
    ChatUniViTeacher,
    cluster_count,
    dpc_knn,
    merge_clusters,
    neighbour_count,
    tokenize_with_placeholders,
)
from cater.testing.tiny.chatunivi import write_tiny_chatunivi

FIXTURE = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "chat_univi"
CASES = ("video8", "image1", "video65")
ATOL = 1e-4


def need_fixture() -> None:
    if not (FIXTURE / "manifest.json").is_file():
        pytest.skip(f"Chat-UniVi parity fixture not found at {FIXTURE}")


@pytest.fixture(scope="module")
def fixture_data():
    need_fixture()
    from safetensors.torch import load_file

    return {
        "manifest": json.loads((FIXTURE / "manifest.json").read_text()),
        "inputs": load_file(str(FIXTURE / "inputs.safetensors")),
        "outputs": load_file(str(FIXTURE / "outputs.safetensors")),
        "inter": load_file(str(FIXTURE / "intermediates.safetensors")),
    }


@pytest.fixture(scope="module")
def fixture_model():
    need_fixture()
    return ChatUniViModel.from_pretrained(FIXTURE, dtype=torch.float32, device="cpu")


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory):
    return write_tiny_chatunivi(tmp_path_factory.mktemp("chatunivi") / "tiny", seed=0)


@pytest.fixture(scope="module")
def teacher(tiny_path):
    return ChatUniViTeacher(TeacherConfig(family="chatunivi", model=str(tiny_path), device="cpu", batch_size=4))


def sample(sample_id: str, num_frames: int, num_choices: int, seed: int, subtitles: str | None = None) -> TeacherInput:
    rng = np.random.default_rng(seed)
    frames = rng.integers(0, 256, size=(num_frames, 40, 48, 3), dtype=np.uint8)
    choices = [f"option {c}" for c in "vwxyz"[:num_choices]]
    return TeacherInput(id=sample_id, frames=frames, question=f"What happens in clip {seed}?", choices=choices, subtitles=subtitles)


# ---- parity with the reference --------------------------------------------------------------


def toy_encode(text: str) -> list[int]:
    """The fixture's stand-in tokenizer: BOS, then UTF-8 byte + 3."""
    return [1] + [byte + 3 for byte in text.encode("utf-8")]


@pytest.mark.parametrize("case", CASES)
def test_prompt_and_placeholder_ids_match_reference(case, fixture_data):
    spec = fixture_data["manifest"]["cases"][case]
    template = CONV_TEMPLATES[spec["template"]]
    prompt = template.prompt(IMAGE_PLACEHOLDER * spec["n_frames"] + "\n" + spec["question"])
    assert prompt == spec["prompt"]
    ids = tokenize_with_placeholders(prompt, toy_encode, bos_id=1)
    assert ids == fixture_data["inputs"][f"{case}.input_ids"][0].tolist()


@pytest.mark.parametrize("case", CASES)
def test_parity_with_reference(case, fixture_data, fixture_model):
    spec = fixture_data["manifest"]["cases"][case]
    inputs, outputs, inter = fixture_data["inputs"], fixture_data["outputs"], fixture_data["inter"]
    pixels = inputs[f"{case}.pixel_values"]
    full = f"{case}.logits" in outputs
    result = fixture_model([inputs[f"{case}.input_ids"][0]], [pixels], logits="all" if full else "last")

    # clip features, events and the order of the merged visual tokens
    features = fixture_model.encode_frames(pixels)
    if spec["kind"] == "image":
        torch.testing.assert_close(features, inter[f"{case}.vision_features"], atol=ATOL, rtol=0)
        assert result.events[0] is None
    else:
        torch.testing.assert_close(features.mean(dim=1), inter[f"{case}.frame_mean_features"], atol=ATOL, rtol=0)
        assert result.events[0] == spec["temporal_events"]
    torch.testing.assert_close(result.merged_visual[0][None], inter[f"{case}.merged_visual_features"], atol=ATOL, rtol=0)
    assert list(result.visual_spans[0]) == spec["visual_span_in_sequence"]

    # final hidden states and logits
    hidden = result.last_hidden_state
    assert hidden.shape[1] == spec["sequence_len_after_splice"]
    torch.testing.assert_close(hidden, outputs[f"{case}.last_hidden_state"], atol=ATOL, rtol=0)
    last = result.logits[:, -1] if full else result.logits
    torch.testing.assert_close(last, outputs[f"{case}.last_logits"], atol=ATOL, rtol=0)
    assert int(last.argmax()) == spec["last_position_argmax"]
    if full:
        torch.testing.assert_close(result.logits, outputs[f"{case}.logits"], atol=ATOL, rtol=0)

    # cluster labels: same calls in the same order; labels are a debugging aid (near-ties may
    # differ where they cannot change the result, ARCHITECTURE.md section 7), so allow <1%
    calls = spec["clustering_calls"]
    assert len(result.cluster_trace[0]) == len(calls)
    differing = total = 0
    for labels, call in zip(result.cluster_trace[0], calls):
        reference = inter[call["tensor"]].long()
        assert labels.shape == reference.shape, call["stage"]
        assert int(labels.max()) + 1 == call["clusters_out"], call["stage"]
        differing += int((labels != reference).sum())
        total += reference.numel()
    assert differing <= 0.01 * total


def test_fixture_without_tokenizer_is_a_clear_error(fixture_data):
    with pytest.raises(TeacherError, match="no tokenizer"):
        ChatUniViTeacher(TeacherConfig(family="chatunivi", model=str(FIXTURE), device="cpu"))


# ---- clustering rules -----------------------------------------------------------------------


def test_cluster_count_and_neighbour_rules():
    assert cluster_count(256, 64) == 64 and cluster_count(1280, 64) == 64  # rates > 1 are counts
    assert [cluster_count(t, 1 / 16) for t in (8, 16, 17, 48, 49, 64, 65)] == [1, 1, 2, 3, 4, 4, 5]
    effective_k = {t: neighbour_count(5, cluster_count(t, 1 / 16)) for t in (8, 17, 48, 49, 64, 65)}
    assert effective_k == {8: 1, 17: 1, 48: 1, 49: 2, 64: 2, 65: 5}
    with pytest.raises(ValueError, match="cannot make 64 clusters from 32 tokens"):
        cluster_count(32, 64)


def test_dpc_knn_groups_blobs_and_ranks_centres_by_score():
    rng = torch.Generator().manual_seed(0)
    centres = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    sizes = (12, 6, 3)  # the biggest blob is densest, so its centre ranks first
    points = torch.cat([c + 0.1 * torch.randn(n, 2, generator=rng) for c, n in zip(centres, sizes)])[None]
    labels = dpc_knn(points, num_clusters=3, k=3, generator=torch.Generator().manual_seed(0))
    blob_of = torch.repeat_interleave(torch.arange(3), torch.tensor(sizes))
    for blob in range(3):
        assert labels[0, blob_of == blob].unique().numel() == 1
    assert labels[0, 0] == 0
    merged = merge_clusters(points, labels, 3)
    for blob in range(3):
        label = int(labels[0, blob_of == blob][0])
        torch.testing.assert_close(merged[0, label], points[0, blob_of == blob].mean(0), atol=1e-5, rtol=0)


# ---- tiny checkpoint round trip -------------------------------------------------------------


def test_tiny_checkpoint_has_the_official_layout(tiny_path):
    need_fixture()
    from safetensors import safe_open

    def keys(file):
        with safe_open(str(file), framework="pt") as handle:
            return set(handle.keys())

    # same depth as the fixture (2 LLaMA layers, 3 CLIP layers), so the names must be identical
    assert keys(tiny_path / "model.safetensors") == keys(FIXTURE / "model.safetensors")
    official = json.loads((FIXTURE / "config.json").read_text())
    ours = json.loads((tiny_path / "config.json").read_text())
    assert set(official) - {"aarchitectures", "transformers_version"} <= set(ours)
    assert ours["config"].keys() == official["config"].keys()
    assert ours["model_type"] == "ChatUniVi"


def test_tiny_round_trip_scores_a_batch(teacher):
    batch = [sample("a", 6, 3, seed=1), sample("b", 1, 5, seed=2, subtitles="someone speaks")]
    outputs = teacher.score(batch)
    assert [o.id for o in outputs] == ["a", "b"]
    for item, out in zip(batch, outputs):
        assert len(out.choice_logits) == len(item.choices)
        assert out.hard_idx == int(np.argmax(out.choice_logits))
        assert out.hidden.shape == (teacher.hidden_size,) and out.hidden.dtype == np.float32
        assert np.isfinite(out.hidden).all() and not out.missing
    # letter ids come from the tokenizer: each ' A'..' E' is one token
    assert list(teacher.letter_ids) == teacher.tokenizer.convert_tokens_to_ids([f"\u2581{letter}" for letter in "ABCDE"])  # LLaMA SentencePiece
    # left padding: the batch gives what each sample gives alone
    for item, out in zip(batch, outputs):
        alone = teacher.score([item])[0]
        np.testing.assert_allclose(out.choice_logits, alone.choice_logits, atol=1e-5)
        np.testing.assert_allclose(out.hidden, alone.hidden, atol=1e-5)


def test_prompt_holds_question_options_and_placeholders_but_no_answer(teacher):
    item = sample("p", 5, 4, seed=3, subtitles="a line of dialogue")
    ids, pixels, prompt = teacher.encode(item)
    assert prompt.count(IMAGE_PLACEHOLDER) == 5 and int((ids == -200).sum()) == 5
    assert pixels.shape == (5, 3, 32, 32)
    for text in [item.question, "A. option v", "D. option y", "Subtitles: a line of dialogue"]:
        assert text in prompt
    assert prompt.endswith("ASSISTANT:") and ids[0] == teacher.tokenizer.bos_token_id


def test_one_pass_letter_scores_equal_per_option_scoring(teacher):
    item = sample("o", 4, 4, seed=4)
    one_pass = teacher.forward([item], logits="last").logits[0]
    scored = teacher.score([item])[0]
    ids, pixels, _ = teacher.encode(item)
    for option, letter_id in enumerate(teacher.letter_ids[: len(item.choices)]):
        # each option on its own: the sequence ending in that option's letter, full logits
        extended = torch.cat([ids, torch.tensor([letter_id])])
        logits = teacher.model([extended], [pixels], logits="all").logits[0]
        at_answer = logits[-2]  # the prediction of the appended letter
        assert abs(float(at_answer[letter_id]) - scored.choice_logits[option]) < 1e-4
        own_logprob = torch.log_softmax(at_answer, -1)[letter_id]
        assert abs(float(own_logprob - torch.log_softmax(one_pass, -1)[letter_id])) < 1e-4


@pytest.mark.parametrize("dtype,torch_dtype", [("bf16", torch.bfloat16), ("fp16", torch.float16)])
def test_dtype_is_honoured(tiny_path, teacher, dtype, torch_dtype):
    low = ChatUniViTeacher(TeacherConfig(family="chatunivi", model=str(tiny_path), device="cpu", dtype=dtype))
    assert low.model.dtype == torch_dtype
    assert {p.dtype for p in low.model.parameters()} == {torch_dtype}
    item = sample("d", 4, 3, seed=5)
    reference, reduced = teacher.score([item])[0], low.score([item])[0]
    assert reduced.hidden.dtype == np.float32
    np.testing.assert_allclose(reduced.choice_logits, reference.choice_logits, atol=0.1)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_matches_cpu(tiny_path, teacher):
    gpu = ChatUniViTeacher(TeacherConfig(family="chatunivi", model=str(tiny_path), device="cuda"))
    assert gpu.model.device.type == "cuda"
    item = sample("g", 8, 5, seed=6)
    np.testing.assert_allclose(gpu.score([item])[0].choice_logits, teacher.score([item])[0].choice_logits, atol=1e-3)


# ---- bad input ------------------------------------------------------------------------------


def test_missing_checkpoint_dir(tmp_path):
    with pytest.raises(TeacherError, match="directory not found"):
        ChatUniViTeacher(TeacherConfig(family="chatunivi", model=str(tmp_path / "nope")))


def test_wrong_family_checkpoint(tmp_path):
    from transformers import LlamaConfig

    LlamaConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32, vocab_size=64).save_pretrained(tmp_path)
    with pytest.raises(TeacherError, match="not a Chat-UniVi checkpoint"):
        ChatUniViTeacher(TeacherConfig(family="chatunivi", model=str(tmp_path)))


def test_checkpoint_without_weights(tmp_path, tiny_path):
    (tmp_path / "config.json").write_text((tiny_path / "config.json").read_text())
    with pytest.raises(TeacherError, match="no model.safetensors"):
        ChatUniViModel.from_pretrained(tmp_path)


def test_more_than_five_options_and_missing_frames(teacher):
    too_many = sample("six", 3, 5, seed=7)
    too_many.choices = too_many.choices + ["option u"]
    with pytest.raises(TeacherError, match="6 choices"):
        teacher.score([too_many])
    no_frames = sample("empty", 3, 3, seed=8)
    no_frames.frames = np.zeros((0, 40, 48, 3), dtype=np.uint8)
    with pytest.raises(TeacherError, match="sample empty: no frames"):
        teacher.score([sample("fine", 3, 3, seed=9), no_frames])
    with pytest.raises(TeacherError, match="uint8"):
        teacher.score([TeacherInput(id="f", frames=np.zeros((2, 8, 8, 3), dtype=np.float32), question="q", choices=["a", "b"])])


def test_perturbing_only_frame_0_moves_the_letter_logits(teacher):
    item = sample("s0", num_frames=8, num_choices=5, seed=3)
    frames = item.frames.copy()
    frames[0] = 255 - frames[0]
    before = teacher.score([item])[0]
    after = teacher.score([TeacherInput(item.id, frames, item.question, item.choices)])[0]
    assert np.abs(np.subtract(before.choice_logits, after.choice_logits)).max() > 1e-4
