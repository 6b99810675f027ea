"""The flamingo teacher: tiny IDEFICS and OpenFlamingo checkpoints written to disk and loaded like real ones."""
from __future__ import annotations

import importlib.util
import json
import os
import shutil

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
import torch
from PIL import Image

from cater.teachers.base import LETTERS, TeacherConfig, TeacherError, TeacherInput
from cater.teachers.flamingo import FlamingoTeacher
from cater.testing.tiny.flamingo import write_tiny_flamingo

HAS_OPEN_FLAMINGO = importlib.util.find_spec("open_flamingo") is not None
needs_open_flamingo = pytest.mark.skipif(
    not HAS_OPEN_FLAMINGO,
    reason="open_flamingo is not installed (pip install --no-deps open-flamingo==2.0.1 einops==0.8.2 einops-exts==0.0.4)",
)
BACKENDS = ["idefics", pytest.param("openflamingo", marks=needs_open_flamingo)]


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("flamingo")
    paths = {"idefics": write_tiny_flamingo(root / "idefics", seed=0, backend="idefics")}
    if HAS_OPEN_FLAMINGO:
        paths["openflamingo"] = write_tiny_flamingo(root / "openflamingo", seed=0, backend="openflamingo")
    return paths


def make_config(path, backend, **kwargs) -> TeacherConfig:
    return TeacherConfig(family="flamingo", model=str(path), device="cpu", extra={"backend": backend}, **kwargs)


@pytest.fixture(scope="module")
def teachers(tiny_dirs):
    return {backend: FlamingoTeacher(make_config(path, backend)) for backend, path in tiny_dirs.items()}


def frames(seed: int, count: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (count, 40, 48, 3), dtype=np.uint8)


def batch() -> list[TeacherInput]:
    """Two samples that differ in frame count, choice count (3 and 5) and subtitles."""
    return [
        TeacherInput("s0", frames(0, 4), "Which shape moved first?", ["red circle", "blue square", "green star"]),
        TeacherInput("s1", frames(1, 3), "What color was it?", ["red", "blue", "green", "yellow", "purple"],
                     subtitles="look at the left side"),
    ]


# ------------------------------------------------------------------------------------------- scoring


@pytest.mark.parametrize("backend", BACKENDS)
def test_tiny_model_loads_from_disk_and_scores_a_batch(teachers, backend):
    teacher = teachers[backend]
    expected_class = "IdeficsForVisionText2Text" if backend == "idefics" else "Flamingo"
    assert type(teacher.backend.model).__name__ == expected_class
    outputs = teacher.score(batch())
    assert [o.id for o in outputs] == ["s0", "s1"]
    assert [len(o.choice_logits) for o in outputs] == [3, 5]
    for out in outputs:
        assert not out.missing
        assert out.hard_idx == int(np.argmax(out.choice_logits))
        assert out.hidden.dtype == np.float32 and out.hidden.shape == (teacher.hidden_size,)
        assert np.isfinite(out.hidden).all() and np.isfinite(out.choice_logits).all()
    assert len(set(teacher.letter_ids)) == len(LETTERS)


def per_option_logits(teacher, backend: str, item: TeacherInput) -> tuple[list[float], np.ndarray]:
    """Reference: one unbatched, unpadded forward pass per option with ' X' appended to the prompt.

    Returns the logit of each letter at the position that predicts it, and the final hidden state there
    (IDEFICS only; OpenFlamingo's own forward does not return hidden states, so that is None).
    """
    images = list(teacher.frames(item))
    prompt = teacher.prompt(item)
    scores, hidden = [], None
    for letter, letter_id in zip(LETTERS, teacher.letter_ids[: len(item.choices)]):
        text = f"{prompt} {letter}"
        with torch.inference_mode():
            if backend == "idefics":
                processor = teacher.backend.processor
                inputs = processor(text=[["User:", *[Image.fromarray(f) for f in images], text]],
                                   add_end_of_utterance_token=False, return_tensors="pt")
                inputs["image_attention_mask"] = inputs["image_attention_mask"].cummax(dim=1).values  # all frames so far
                out = teacher.backend.model(**inputs, output_hidden_states=True)
                ids, logits, hidden = inputs["input_ids"][0], out.logits[0], out.hidden_states[-1][0, -2].numpy()
            else:
                of = teacher.backend
                vision = torch.stack([of.image_processor(Image.fromarray(f)) for f in images])[None, None]  # 1 media
                tokens = of.tokenizer(["<image>" + text], return_tensors="pt")
                of._encode_frames(vision)
                of.model._condition_media_locations(input_ids=tokens["input_ids"])
                out = of.model.lang_encoder(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"])
                of.model.lang_encoder.clear_conditioned_layers()
                ids, logits = tokens["input_ids"][0], out.logits[0]
        assert int(ids[-1]) == letter_id, f"{letter!r} did not encode to the letter token after the prompt"
        scores.append(float(logits[-2, letter_id]))
    return scores, hidden


@pytest.mark.filterwarnings("ignore:`past_key_values` is deprecated:FutureWarning")  # open_flamingo's forward
@pytest.mark.parametrize("backend", BACKENDS)
def test_one_pass_scores_equal_per_option_scoring(teachers, backend):
    teacher = teachers[backend]
    items = batch()
    outputs = teacher.score(items)
    for item, out in zip(items, outputs):
        reference, hidden = per_option_logits(teacher, backend, item)
        np.testing.assert_allclose(out.choice_logits, reference, atol=1e-4, rtol=0)
        assert out.hard_idx == int(np.argmax(reference))
        if hidden is not None:
            np.testing.assert_allclose(out.hidden, hidden, atol=1e-4, rtol=0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_hidden_is_the_final_state_the_letter_logits_come_from(teachers, backend):
    teacher = teachers[backend]
    model = teacher.backend.model
    head = model.lm_head if backend == "idefics" else model.lang_encoder.get_output_embeddings()
    for out in teacher.score(batch()):
        with torch.inference_mode():
            logits = head(torch.from_numpy(out.hidden))
        letter_logits = logits[list(teacher.letter_ids[: len(out.choice_logits)])].numpy()
        np.testing.assert_allclose(out.choice_logits, letter_logits, atol=1e-4, rtol=0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_scores_depend_on_the_frames(teachers, backend):
    teacher = teachers[backend]
    item = batch()[0]
    changed = TeacherInput(item.id, frames(7, 4), item.question, item.choices)
    before, after = teacher.score([item])[0], teacher.score([changed])[0]
    assert np.abs(np.subtract(before.choice_logits, after.choice_logits)).max() > 1e-3


@pytest.mark.parametrize("backend", BACKENDS)
def test_every_frame_reaches_the_question_and_the_answer_position(teachers, backend):
    teacher = teachers[backend]
    items = batch()
    inputs = teacher.backend.encode([teacher.frames(i) for i in items], [teacher.prompt(i) for i in items])
    tokenizer = teacher.backend.tokenizer
    image_id = tokenizer.convert_tokens_to_ids("<image>")
    if backend == "idefics":
        ids = inputs["input_ids"]
        assert (ids == image_id).sum(dim=1).tolist() == [4, 3]  # each frame one image, in time order
        mask = inputs["attention_mask"]
        assert mask[:, -1].all() and not mask[:, 0].all()  # left padding: the shorter row starts with pads
        assert tuple(inputs["pixel_values"].shape[:2]) == (2, 4)
        for row, count in enumerate((4, 3)):
            positions = (ids[row] == image_id).nonzero().flatten()
            cross = inputs["image_attention_mask"][row]
            for k, position in enumerate(positions):  # the k-th image token sees frames 0..k
                assert cross[position, : k + 1].all() and not cross[position, k + 1:].any()
            assert cross[-1, :count].all()  # the answer position attends to every frame, not the last alone
    else:
        groups = inputs["groups"]
        assert [g["rows"] for g in groups] == [[1], [0]]  # grouped by frame count (3, then 4)
        for group, count in zip(groups, (3, 4)):
            assert tuple(group["vision_x"].shape[:3]) == (1, 1, count)  # one media item, the frames on its frame axis
            assert (group["lang_x"] == image_id).sum().item() == 1
        expected_first = teacher.backend.image_processor(Image.fromarray(items[0].frames[0]))
        torch.testing.assert_close(groups[1]["vision_x"][0, 0, 0], expected_first)


@pytest.mark.parametrize("backend", BACKENDS)
def test_perturbing_only_frame_0_moves_the_letter_logits(teachers, backend):
    teacher = teachers[backend]
    item = batch()[0]
    changed_frames = item.frames.copy()
    changed_frames[0] = 255 - changed_frames[0]
    changed = TeacherInput(item.id, changed_frames, item.question, item.choices)
    before, after = teacher.score([item])[0], teacher.score([changed])[0]
    assert np.abs(np.subtract(before.choice_logits, after.choice_logits)).max() > 1e-4


@pytest.mark.parametrize("backend", BACKENDS)
def test_prompt_has_question_options_subtitles_and_answer_cue(teachers, backend):
    item = batch()[1]
    prompt = teachers[backend].prompt(item)
    assert "Question: What color was it?" in prompt
    assert "A. red\nB. blue\nC. green\nD. yellow\nE. purple" in prompt
    assert "Subtitles: look at the left side" in prompt
    cue = "<end_of_utterance>\nAssistant: Answer:" if backend == "idefics" else "\nAnswer:"
    assert prompt.endswith(cue)


@pytest.mark.parametrize("backend", BACKENDS)
def test_num_frames_samples_uniformly(tiny_dirs, backend):
    teacher = FlamingoTeacher(make_config(tiny_dirs[backend], backend, num_frames=2))
    clip = frames(3, 8)
    chosen = teacher.frames(TeacherInput("x", clip, "q?", ["a", "b"]))
    assert np.array_equal(chosen, clip[[2, 6]])


@pytest.mark.parametrize("backend", BACKENDS)
def test_dtype_is_honoured(tiny_dirs, backend):
    teacher = FlamingoTeacher(make_config(tiny_dirs[backend], backend, dtype="bf16"))
    assert {p.dtype for p in teacher.backend.model.parameters()} == {torch.bfloat16}
    out = teacher.score(batch())
    assert all(o.hidden.dtype == np.float32 and np.isfinite(o.choice_logits).all() for o in out)


@pytest.mark.parametrize("backend", BACKENDS)
def test_tiny_checkpoint_is_deterministic_in_the_seed(tmp_path, tiny_dirs, teachers, backend):
    again = FlamingoTeacher(make_config(write_tiny_flamingo(tmp_path / "a", seed=0, backend=backend), backend))
    other = FlamingoTeacher(make_config(write_tiny_flamingo(tmp_path / "b", seed=1, backend=backend), backend))
    reference = [o.choice_logits for o in teachers[backend].score(batch())]
    assert [o.choice_logits for o in again.score(batch())] == reference
    assert [o.choice_logits for o in other.score(batch())] != reference


# ------------------------------------------------------------------------------------------- errors


def test_unknown_backend_and_wrong_family_are_errors(tiny_dirs):
    with pytest.raises(TeacherError, match="unknown flamingo backend 'perceiver'"):
        FlamingoTeacher(make_config(tiny_dirs["idefics"], "perceiver"))
    with pytest.raises(TeacherError, match="only loads 'flamingo'"):
        FlamingoTeacher(TeacherConfig(family="videollava", model=str(tiny_dirs["idefics"]), device="cpu"))
    with pytest.raises(TeacherError, match="unknown option"):
        FlamingoTeacher(TeacherConfig("flamingo", str(tiny_dirs["idefics"]), device="cpu", extra={"frames": 3}))
    with pytest.raises(TeacherError, match="quantization"):
        FlamingoTeacher(TeacherConfig("flamingo", str(tiny_dirs["idefics"]), device="cpu", quantization="4bit"))


def test_default_backend_is_idefics(tiny_dirs):
    teacher = FlamingoTeacher(TeacherConfig("flamingo", str(tiny_dirs["idefics"]), device="cpu"))
    assert teacher.backend_name == "idefics"


@pytest.mark.parametrize("backend", BACKENDS)
def test_missing_checkpoint_is_an_error(tmp_path, backend):
    with pytest.raises(TeacherError, match="checkpoint not found"):
        FlamingoTeacher(make_config(tmp_path / "nowhere", backend))


@needs_open_flamingo
def test_idefics_backend_rejects_other_checkpoints(tiny_dirs):
    with pytest.raises(TeacherError, match="no config.json"):
        FlamingoTeacher(make_config(tiny_dirs["openflamingo"], "idefics"))
    with pytest.raises(TeacherError, match="model_type is 'mpt'"):
        FlamingoTeacher(make_config(tiny_dirs["openflamingo"] / "lm", "idefics"))


@needs_open_flamingo
def test_openflamingo_backend_rejects_bad_directories(tmp_path, tiny_dirs):
    with pytest.raises(TeacherError, match="no openflamingo.json"):
        FlamingoTeacher(make_config(tiny_dirs["idefics"], "openflamingo"))

    broken = shutil.copytree(tiny_dirs["openflamingo"], tmp_path / "broken")
    (broken / "checkpoint.pt").unlink()
    with pytest.raises(TeacherError, match="field checkpoint: .*does not exist"):
        FlamingoTeacher(make_config(broken, "openflamingo"))

    # a checkpoint without the cross-attention weights must not load as a half-random model
    state = torch.load(tiny_dirs["openflamingo"] / "checkpoint.pt", weights_only=True)
    torch.save({k: v for k, v in state.items() if "gated_cross_attn" not in k}, broken / "checkpoint.pt")
    with pytest.raises(TeacherError, match="cross-attention weights missing"):
        FlamingoTeacher(make_config(broken, "openflamingo"))

    manifest = json.loads((broken / "openflamingo.json").read_text())
    (broken / "openflamingo.json").write_text(json.dumps({**manifest, "vision": "x"}))
    with pytest.raises(TeacherError, match=r"unknown field\(s\) \['vision'\]"):
        FlamingoTeacher(make_config(broken, "openflamingo"))


@needs_open_flamingo
def test_openflamingo_runs_no_checkpoint_code_unless_trusted(tmp_path, tiny_dirs):
    """open_flamingo's factory loads with trust_remote_code=True; we refuse what could use it."""
    remote = shutil.copytree(tiny_dirs["openflamingo"], tmp_path / "remote")
    marker = tmp_path / "ran"
    (remote / "lm" / "evil.py").write_text(f"open({str(marker)!r}, 'w').write('x')\n")
    config = json.loads((remote / "lm" / "config.json").read_text())
    (remote / "lm" / "config.json").write_text(json.dumps({**config, "auto_map": {"AutoConfig": "evil.EvilConfig"}}))
    with pytest.raises(TeacherError, match=r"auto_map.*trust_remote_code: true"):
        FlamingoTeacher(make_config(remote, "openflamingo"))
    assert not marker.exists()

    hub = shutil.copytree(tiny_dirs["openflamingo"], tmp_path / "hub")
    manifest = json.loads((hub / "openflamingo.json").read_text())
    (hub / "openflamingo.json").write_text(json.dumps({**manifest, "lang_encoder_path": "some-org/some-mpt"}))
    with pytest.raises(TeacherError, match="lang_encoder_path .* is not a local folder"):
        FlamingoTeacher(make_config(hub, "openflamingo"))
    bad = make_config(tiny_dirs["openflamingo"], "openflamingo")
    bad.extra["trust_remote_code"] = "yes"
    with pytest.raises(TeacherError, match="trust_remote_code must be true or false"):
        FlamingoTeacher(bad)


def test_letters_that_are_not_single_tokens_are_an_error(tmp_path, tiny_dirs):
    path = shutil.copytree(tiny_dirs["idefics"], tmp_path / "split_letters")
    tokenizer_file = path / "tokenizer.json"
    spec = json.loads(tokenizer_file.read_text())
    spec["model"]["merges"] = []  # ' A' now encodes as two tokens, 'Ġ' and 'A'
    tokenizer_file.write_text(json.dumps(spec))
    with pytest.raises(TeacherError, match="does not encode to exactly one token"):
        FlamingoTeacher(make_config(path, "idefics"))


@pytest.mark.parametrize("backend", BACKENDS)
def test_bad_inputs_are_errors(teachers, backend):
    teacher = teachers[backend]
    good = batch()[0]
    cases = {
        "no frames": TeacherInput("x", np.zeros((0, 8, 8, 3), np.uint8), good.question, good.choices),
        "6 choices": TeacherInput("x", good.frames, good.question, list("abcdef")),
        r"uint8 \[T, H, W, 3\]": TeacherInput("x", good.frames[..., 0], good.question, good.choices),
        "special token '<image>'": TeacherInput("x", good.frames, "what is <image>?", good.choices),
    }
    for message, item in cases.items():
        with pytest.raises(TeacherError, match=message):
            teacher.score([good, item])
