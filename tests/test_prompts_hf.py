"""The `hf` prompt backend with tiny causal LMs written to disk and loaded by `from_pretrained`."""
from __future__ import annotations

import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest

from cater.prompts.base import PromptError, PromptRequest, VideoPrompts
from cater.prompts.hf_backend import HFBackend, parse_generation, visual_summary
from cater.testing.tiny.causal_lm import write_tiny_causal_lm

LIST_SCRIPT = ["Events:\n", "1. A red square appears.\n", "2. It slides to the right.\n", "Frames:\n",
               "1. A red square at the top left.\n", "2. A red square at the top centre.\n"]
JSON_SCRIPT = ['Here you go: {"events": ["A red square appears and moves right."], ',
               '"frames": ["Red square, top left.", ', '"Red square, top centre."]}']


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny_llms")
    return {name: write_tiny_causal_lm(root / name, seed=0, script=script)
            for name, script in (("random", None), ("list", LIST_SCRIPT), ("json", JSON_SCRIPT))}


def red_square_request(video_id: str = "v0") -> PromptRequest:
    frames = np.zeros((2, 48, 48, 3), dtype=np.uint8)
    frames[0, 2:12, 2:12] = (220, 40, 40)
    frames[1, 2:12, 19:29] = (220, 40, 40)
    return PromptRequest(video_id=video_id, frames=frames, frame_times=[0.0, 1.0],
                         questions=["Which shape appeared first?"])


def test_visual_summary_names_colours_places_and_motion():
    request = red_square_request()
    summary = visual_summary(request.frames, request.frame_times)
    assert summary == visual_summary(request.frames.copy(), request.frame_times)  # deterministic
    assert summary[0] == "Frame 1 at 0.00 s: dark, mostly black; red at the top left."
    assert "red at the top centre (moved right)" in summary[1] and "small change" in summary[1]


def test_parse_generation_json_lists_and_failures():
    assert parse_generation('noise {"a": 1} then {"events": ["e"], "frames": ["f1", "f2"]} end', 2) == (["e"], ["f1", "f2"])
    text = "Sure.\n**Events**\n1) first thing\n- second thing\n\nFrame prompts:\n1. one\n2: two\n"
    assert parse_generation(text, 2) == (["first thing", "second thing"], ["one", "two"])
    for bad, reason in [("random words without structure", "neither JSON nor"),
                        ("Events:\n1. e\nFrames:\n1. one\n", "1 frame sentences for 2 frames"),
                        ('{"events": ["e"], "frames": ["a", 2]}', "lists of strings"),
                        ('{"events": [" "], "frames": ["a", "b"]}', "no events"),
                        ("Events:\n1. e\n", "neither JSON nor")]:
        with pytest.raises(PromptError, match=reason):
            parse_generation(bad, 2)


def test_random_model_output_is_a_prompt_error_not_filler(models, tmp_path):
    backend = HFBackend(model=str(models["random"]), cache_dir=tmp_path / "cache", max_new_tokens=24)
    [result] = backend.generate([red_square_request()])
    assert isinstance(result, PromptError)
    assert str(result).startswith("video v0: answer is neither JSON nor")
    # greedy decoding: the same text again, and a failure is not cached
    [again] = backend.generate([red_square_request()])
    assert str(again) == str(result) and backend.generations == 2


@pytest.mark.parametrize("script", ["list", "json"])
def test_scripted_model_output_is_parsed_and_cached(models, tmp_path, script):
    backend = HFBackend(model=str(models[script]), cache_dir=tmp_path / "cache", max_new_tokens=40)
    [result] = backend.generate([red_square_request()])
    assert isinstance(result, VideoPrompts), result
    result.validate(2)
    if script == "list":
        assert [e["text"] for e in result.events] == ["A red square appears.", "It slides to the right."]
        assert result.frames == ["A red square at the top left.", "A red square at the top centre."]
    else:
        assert result.events == [{"text": "A red square appears and moves right.", "start_frame": 0, "end_frame": 1}]
        assert result.frames == ["Red square, top left.", "Red square, top centre."]
    fresh = HFBackend(model=str(models[script]), cache_dir=tmp_path / "cache", max_new_tokens=40)
    [cached] = fresh.generate([red_square_request()])
    assert cached.to_record() == result.to_record()
    assert fresh.generations == 0 and fresh._model is None  # answered from the cache, no model loaded


def test_prompt_holds_summary_and_questions_only(models, tmp_path):
    backend = HFBackend(model=str(models["list"]), cache_dir=tmp_path)
    prompt = backend.prompt_text(red_square_request())
    assert "red at the top left" in prompt and "Which shape appeared first?" in prompt
    assert prompt.endswith("<|assistant|>")


def test_summary_from_another_generator(models, tmp_path):
    source = tmp_path / "annotations.jsonl"
    source.write_text(json.dumps({"video_id": "v0", "events": [], "frames": ["SRC frame one", "SRC frame two"]}) + "\n")
    backend = HFBackend(model=str(models["list"]), cache_dir=tmp_path / "cache", summary_from=str(source))
    user = backend.messages(red_square_request())[1]["content"]
    assert "1. SRC frame one" in user and "2. SRC frame two" in user and "red at" not in user
    ok, missing = backend.generate([red_square_request("v0"), red_square_request("v9")])
    assert isinstance(ok, VideoPrompts)
    assert isinstance(missing, PromptError) and "no frame prompts for this video" in str(missing)
    with pytest.raises(FileNotFoundError, match="summary_from"):
        HFBackend(model=str(models["list"]), cache_dir=tmp_path, summary_from=str(tmp_path / "nope.jsonl"))


def test_chat_templates(models, tmp_path):
    from transformers import AutoTokenizer

    no_template = tmp_path / "no_template"
    tokenizer = AutoTokenizer.from_pretrained(models["list"])
    tokenizer.chat_template = None
    tokenizer.save_pretrained(no_template)
    for name in ("config.json", "model.safetensors", "generation_config.json"):
        if (models["list"] / name).exists():
            (no_template / name).write_bytes((models["list"] / name).read_bytes())
    with pytest.raises(ValueError, match="has no chat template"):
        HFBackend(model=str(no_template), cache_dir=tmp_path / "c1").generate([red_square_request()])
    vicuna = HFBackend(model=str(no_template), cache_dir=tmp_path / "c2", chat_template="vicuna")
    prompt = vicuna.prompt_text(red_square_request())
    assert "USER: What each sampled frame" in prompt and prompt.endswith("ASSISTANT:")
    # a template that refuses a system turn (like Mistral's) gets the instructions in the user turn
    strict = ("{% for m in messages %}{% if m['role'] == 'system' %}{{ raise_exception('no system role') }}"
              "{% endif %}[INST] {{ m['content'] }} [/INST]{% endfor %}")
    mistral_like = HFBackend(model=str(no_template), cache_dir=tmp_path / "c3", chat_template=strict)
    prompt = mistral_like.prompt_text(red_square_request())
    assert prompt.startswith("[INST] You turn a frame-by-frame description") and "Which shape appeared first?" in prompt


def test_bad_options_fail_early(tmp_path):
    with pytest.raises(ValueError, match="max_new_tokens"):
        HFBackend(model="x", cache_dir=tmp_path, max_new_tokens=0)
    with pytest.raises(ValueError, match="dtype"):
        HFBackend(model="x", cache_dir=tmp_path, dtype="int8")


def test_cache_key_follows_the_weights_at_a_path(tmp_path):
    path = write_tiny_causal_lm(tmp_path / "model", seed=0)
    HFBackend(model=str(path), cache_dir=tmp_path / "cache", max_new_tokens=4).generate([red_square_request()])
    write_tiny_causal_lm(path, seed=1)  # same path, same file sizes, other weights
    again = HFBackend(model=str(path), cache_dir=tmp_path / "cache", max_new_tokens=4)
    again.generate([red_square_request()])
    assert again.generations == 1  # not answered from the first model's cache


# ---- trust_remote_code: a checkpoint's own Python code runs only when the generator turns it on -------------

REMOTE_CODE = '''
import os
from pathlib import Path

Path(os.environ["CATER_REMOTE_CODE_MARKER"]).write_text("the checkpoint's code ran")

from transformers import LlamaConfig, LlamaForCausalLM


class RemoteConfig(LlamaConfig):
    model_type = "cater_remote_test"


class RemoteForCausalLM(LlamaForCausalLM):
    config_class = RemoteConfig
'''


@pytest.fixture
def remote_code_model(tmp_path, monkeypatch):
    """A tiny LM whose config.json names a model type only its own custom_code.py defines (auto_map)."""
    import transformers.dynamic_module_utils as dynamic

    path = write_tiny_causal_lm(tmp_path / "remote", seed=0, script=LIST_SCRIPT)
    config = json.loads((path / "config.json").read_text())
    config.update(model_type="cater_remote_test", architectures=["RemoteForCausalLM"],
                  auto_map={"AutoConfig": "custom_code.RemoteConfig", "AutoModelForCausalLM": "custom_code.RemoteForCausalLM"})
    (path / "config.json").write_text(json.dumps(config))
    (path / "custom_code.py").write_text(REMOTE_CODE)
    marker = tmp_path / "remote-code-ran"
    monkeypatch.setenv("CATER_REMOTE_CODE_MARKER", str(marker))
    monkeypatch.setattr(dynamic, "HF_MODULES_CACHE", str(tmp_path / "hf_modules"))  # copies of the code land here
    return path, marker


def test_remote_code_does_not_run_by_default(remote_code_model, tmp_path, monkeypatch):
    path, marker = remote_code_model
    # someone at a terminal (or `yes | cater prompts ...`) would answer transformers' "run the custom code?" prompt
    monkeypatch.setattr("builtins.input", lambda *args: "y")
    with pytest.raises(ValueError, match="trust_remote_code"):
        HFBackend(model=str(path), cache_dir=tmp_path / "cache", max_new_tokens=40).generate([red_square_request()])
    assert not marker.exists()


def test_remote_code_runs_when_the_generator_turns_it_on(remote_code_model, tmp_path):
    path, marker = remote_code_model
    backend = HFBackend(model=str(path), cache_dir=tmp_path / "cache", max_new_tokens=40, trust_remote_code=True)
    [result] = backend.generate([red_square_request()])
    assert isinstance(result, VideoPrompts), result
    assert marker.exists() and type(backend._model).__name__ == "RemoteForCausalLM"


def test_trust_remote_code_must_be_a_boolean(tmp_path):
    with pytest.raises(ValueError, match="trust_remote_code must be true or false"):
        HFBackend(model="x", cache_dir=tmp_path, trust_remote_code="yes")


def test_summary_field_events_rewrites_the_event_prompts_per_frame(models, tmp_path):
    source = tmp_path / "given.jsonl"
    source.write_text(json.dumps({"video_id": "v0", "frames": ["F one", "F two"],
                                  "events": [{"text": "EV first.", "start_frame": 0, "end_frame": 0},
                                             {"text": "EV second.", "start_frame": 1, "end_frame": 1}]}) + "\n")
    backend = HFBackend(model=str(models["list"]), cache_dir=tmp_path / "c", summary_from=str(source), summary_field="events")
    user = backend.messages(red_square_request())[1]["content"]
    assert "1. EV first." in user and "2. EV second." in user and "F one" not in user
    with pytest.raises(ValueError, match="summary_field must be one of"):
        HFBackend(model="x", cache_dir=tmp_path, summary_from=str(source), summary_field="event_prompts")
    with pytest.raises(ValueError, match="set summary_from too"):
        HFBackend(model="x", cache_dir=tmp_path, summary_field="events")


def test_sampling_is_seeded_per_prompt_and_cached_apart_from_greedy(models, tmp_path):
    def texts(seed, cache, order=(0, 1)):
        backend = HFBackend(model=str(models["random"]), cache_dir=tmp_path / cache, max_new_tokens=16, temperature=1.5,
                            seed=seed)
        results = backend.generate([red_square_request(f"v{i}") if i else red_square_request() for i in order])
        return [str(r) for r in results], backend

    first, _ = texts(0, "a")
    again, _ = texts(0, "b", order=(1, 0))  # a fresh cache, the other order: the same samples
    assert first == again[::-1]
    other, _ = texts(1, "c")
    assert other != first  # another seed samples other text
    greedy = HFBackend(model=str(models["random"]), cache_dir=tmp_path / "a", max_new_tokens=16)
    greedy.generate([red_square_request()])
    assert greedy.generations == 1  # a sampled answer is never served for a greedy request
    for bad in ({"temperature": -1}, {"temperature": True}, {"seed": "0"}):
        with pytest.raises(ValueError, match="temperature|seed"):
            HFBackend(model="x", cache_dir=tmp_path, **bad)


def test_subtitles_reach_the_local_llm_only_when_asked(models, tmp_path):
    import dataclasses

    request = dataclasses.replace(red_square_request(), subtitles="(Penny:) Hello.")
    plain = HFBackend(model=str(models["list"]), cache_dir=tmp_path / "a").messages(request)[1]["content"]
    told = HFBackend(model=str(models["list"]), cache_dir=tmp_path / "b", use_subtitles=True).messages(request)[1]["content"]
    assert "(Penny:) Hello." not in plain and "(Penny:) Hello." in told and "Subtitles of this video" in told
