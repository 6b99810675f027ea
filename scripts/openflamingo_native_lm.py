"""Make a local copy of OpenFlamingo's MPT language model that transformers loads natively, with no remote code.

The published MPT folders (mosaicml/mpt-7b, and anas-awadalla/mpt-7b that OpenFlamingo-9B-vitl-mpt7b names)
carry their own Python (`configuration_mpt.py`, `modeling_mpt.py`) and point config.json at it (`auto_map`);
open_flamingo always loads with trust_remote_code=True, so that code would run. transformers' own
`MptForCausalLM` reads the same config keys and weight names. This script copies the folder without the
Python files and without `auto_map`, then checks, on the meta device (no weights in memory), that the native
class builds from the copied config and that its parameter names are exactly those of the weight files
(the tied `lm_head` aside). The weight files are read by their headers or index only: no pickle is loaded.

    python scripts/openflamingo_native_lm.py /downloads/mpt-7b models/mpt-7b-native

Then set `lang_encoder_path` (and `tokenizer_path`) in the checkpoint's openflamingo.json to the copy; the
teacher runs without `trust_remote_code`. Exit status 1, naming the problem, if the copy would not load natively.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

REMOTE_ONLY_KEYS = ("auto_map",)


class NativeCopyError(RuntimeError):
    pass


def weight_names(folder: Path) -> set[str]:
    """Parameter names stored in the folder's weights: from the safetensors headers or the shard index."""
    from safetensors import safe_open

    for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        index = folder / index_name
        if index.is_file():
            return set(json.loads(index.read_text(encoding="utf-8"))["weight_map"])
    single = folder / "model.safetensors"
    if single.is_file():
        with safe_open(str(single), framework="pt") as handle:
            return set(handle.keys())
    single = folder / "pytorch_model.bin"
    if single.is_file():
        import torch

        return set(torch.load(single, map_location="meta", weights_only=True, mmap=True))  # no pickle code runs
    raise NativeCopyError(f"{folder}: no weights (model.safetensors, pytorch_model.bin or a shard index)")


def native_names(config_path: Path) -> tuple[set[str], set[str]]:
    """(parameter names of the native MptForCausalLM built from `config_path` on the meta device, tied names)."""
    from accelerate import init_empty_weights
    from transformers import MptConfig, MptForCausalLM

    config = MptConfig.from_json_file(str(config_path))
    with init_empty_weights():
        model = MptForCausalLM(config)
    names = {name for name, _ in model.named_parameters(remove_duplicate=False)}
    tied = {"lm_head.weight"} if getattr(config, "tie_word_embeddings", True) else set()
    return names, tied


def make_native_copy(source: Path, target: Path) -> dict:
    source, target = Path(source), Path(target)
    config_file = source / "config.json"
    if not config_file.is_file():
        raise NativeCopyError(f"{source}: no config.json")
    config = json.loads(config_file.read_text(encoding="utf-8"))
    if config.get("model_type") != "mpt":
        raise NativeCopyError(f"{config_file}: model_type is {config.get('model_type')!r}, not 'mpt'")
    if target.exists():
        raise NativeCopyError(f"{target} exists; choose a new folder")
    staging = target.with_name(target.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(source, staging, ignore=shutil.ignore_patterns("*.py", "__pycache__", ".git*"), symlinks=False)  # real files: never write through a link into the source
    native = {k: v for k, v in config.items() if k not in REMOTE_ONLY_KEYS}
    (staging / "config.json").write_text(json.dumps(native, indent=2) + "\n", encoding="utf-8")
    tokenizer_config = staging / "tokenizer_config.json"
    if tokenizer_config.is_file():
        settings = json.loads(tokenizer_config.read_text(encoding="utf-8"))
        if settings.pop("auto_map", None) is not None:
            tokenizer_config.write_text(json.dumps(settings, indent=2) + "\n", encoding="utf-8")
    try:
        expected, tied = native_names(staging / "config.json")
        stored = weight_names(staging)
        missing = sorted(expected - stored - tied)
        unexpected = sorted(stored - expected)
        if missing or unexpected:
            raise NativeCopyError(f"{source}: the native MptForCausalLM does not match the weights: "
                                  f"{len(missing)} missing (first: {missing[:3]}), {len(unexpected)} unexpected "
                                  f"(first: {unexpected[:3]})")
    except Exception:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    staging.rename(target)
    return {"parameters": len(expected), "dropped": sorted(set(config) - set(native)),
            "python_files_left_out": sorted(p.name for p in source.glob("*.py"))}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path, help="the downloaded MPT folder (config.json, weights, tokenizer)")
    parser.add_argument("target", type=Path, help="a new folder for the native copy")
    args = parser.parse_args(argv)
    try:
        report = make_native_copy(args.source, args.target)
    except (NativeCopyError, OSError, RuntimeError) as exc:
        print(f"openflamingo_native_lm: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {args.target}: {report['parameters']} parameter tensors match the native MptForCausalLM; "
          f"dropped config keys {report['dropped']}; left out {report['python_files_left_out']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
