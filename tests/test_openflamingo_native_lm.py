"""scripts/openflamingo_native_lm.py: a published-style MPT folder (remote code named by auto_map, sharded
.bin weights with an index, tied lm_head not stored) becomes a folder the native MptForCausalLM loads with
the same logits, and that the OpenFlamingo teacher's remote-code guard accepts."""
from __future__ import annotations

import importlib.util
import json

import pytest
import torch

from cater.teachers.base import TeacherError
from cater.teachers.flamingo import check_no_remote_code
from helpers.dvc_workspace import REPO

spec = importlib.util.spec_from_file_location("openflamingo_native_lm", REPO / "scripts/openflamingo_native_lm.py")
native_lm = importlib.util.module_from_spec(spec)
spec.loader.exec_module(native_lm)

AUTO_MAP = {"AutoConfig": "configuration_mpt.MPTConfig", "AutoModelForCausalLM": "modeling_mpt.MPTForCausalLM"}


def write_published_mpt(folder, rename: dict[str, str] | None = None):
    """A tiny MPT laid out as mosaicml/mpt-7b is: config.json with auto_map, its own .py files, two .bin shards."""
    from transformers import MptConfig, MptForCausalLM

    torch.manual_seed(0)
    model = MptForCausalLM(MptConfig(vocab_size=64, d_model=16, n_heads=2, n_layers=2, expansion_ratio=2,
                                     max_seq_len=32, no_bias=True)).eval()
    folder.mkdir(parents=True)
    state = {k: v for k, v in model.state_dict().items() if k != "lm_head.weight"}  # tied to wte: not stored
    for old, new in (rename or {}).items():
        state[new] = state.pop(old)
    names = sorted(state)
    shards = {"pytorch_model-00001-of-00002.bin": names[: len(names) // 2],
              "pytorch_model-00002-of-00002.bin": names[len(names) // 2:]}
    for file, keys in shards.items():
        torch.save({k: state[k] for k in keys}, folder / file)
    (folder / "pytorch_model.bin.index.json").write_text(json.dumps(
        {"metadata": {}, "weight_map": {k: f for f, keys in shards.items() for k in keys}}))
    config = {**model.config.to_dict(), "auto_map": AUTO_MAP}
    (folder / "config.json").write_text(json.dumps(config))
    for name in ("configuration_mpt.py", "modeling_mpt.py"):
        (folder / name).write_text('raise RuntimeError("remote code ran")\n')
    return model


def test_the_native_copy_loads_without_remote_code_and_gives_the_same_logits(tmp_path, capsys):
    from transformers import MptForCausalLM

    original = write_published_mpt(tmp_path / "mpt-7b")
    with pytest.raises(TeacherError, match="auto_map"):
        check_no_remote_code({"lang_encoder_path": str(tmp_path / "mpt-7b"), "tokenizer_path": str(tmp_path / "mpt-7b")})

    assert native_lm.main([str(tmp_path / "mpt-7b"), str(tmp_path / "native")]) == 0
    assert "parameter tensors match the native MptForCausalLM" in capsys.readouterr().out
    native = tmp_path / "native"
    assert not list(native.glob("*.py")) and "auto_map" not in json.loads((native / "config.json").read_text())
    check_no_remote_code({"lang_encoder_path": str(native), "tokenizer_path": str(native)})  # accepted now
    loaded = MptForCausalLM.from_pretrained(str(native), trust_remote_code=False).eval()
    ids = torch.tensor([[1, 5, 9, 2, 33]])
    with torch.no_grad():
        assert torch.allclose(loaded(ids).logits, original(ids).logits, atol=1e-6)


def test_weights_the_native_class_does_not_know_are_refused_and_nothing_is_left(tmp_path, capsys):
    write_published_mpt(tmp_path / "mpt", rename={"transformer.blocks.0.attn.Wqkv.weight": "transformer.blocks.0.attn.qkv.weight"})
    assert native_lm.main([str(tmp_path / "mpt"), str(tmp_path / "native")]) == 1
    err = capsys.readouterr().err
    assert "1 missing (first: ['transformer.blocks.0.attn.Wqkv.weight'])" in err
    assert "1 unexpected (first: ['transformer.blocks.0.attn.qkv.weight'])" in err
    assert not (tmp_path / "native").exists() and not (tmp_path / "native.partial").exists()


def test_a_folder_that_is_not_mpt_is_refused(tmp_path):
    (tmp_path / "llama").mkdir()
    (tmp_path / "llama/config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(native_lm.NativeCopyError, match="model_type is 'llama', not 'mpt'"):
        native_lm.make_native_copy(tmp_path / "llama", tmp_path / "out")
