"""The frozen HF transformers CLIPModel backbone (features.library: transformers): token features agree with
CLIPModel's own encoders, and the features stage runs with it. A tiny random checkpoint is written to disk."""
from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from helpers.tiny_hf_clip import CONTEXT, IMAGE_SIZE, MEAN, PATCH_SIZE, PROJECTION, STD, write_tiny_hf_clip

from cater.config import ConfigError, load_params
from cater.models.backbone import BackboneSpec, FrozenHFCLIP, load_backbone

REPO_PARAMS = Path(__file__).resolve().parents[1] / "params.yaml"
TEXTS = ["the cat in the hat", "an onion", "Nothing new happens, and then a red circle appears and moves left."]


def pooler(output) -> torch.Tensor:
    """get_*_features returns the projected tensor (transformers 4) or an output whose pooler_output it is (5)."""
    return getattr(output, "pooler_output", output)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return write_tiny_hf_clip(tmp_path_factory.mktemp("tiny-hf-clip"))


@pytest.fixture(scope="module")
def backbone(checkpoint) -> FrozenHFCLIP:
    return load_backbone(BackboneSpec("tiny-hf-clip", str(checkpoint), 0, "transformers"))


def test_is_frozen_with_the_checkpoints_dimensions(backbone):
    assert isinstance(backbone, FrozenHFCLIP)
    assert not any(p.requires_grad for p in backbone.parameters())
    assert not backbone.model.training
    assert (backbone.image_size, backbone.embed_dim, backbone.context_length) == (IMAGE_SIZE, PROJECTION, CONTEXT)
    # normalisation from preprocessor_config.json, not CLIP's default
    torch.testing.assert_close(backbone.mean.flatten(), torch.tensor(MEAN))
    torch.testing.assert_close(backbone.std.flatten(), torch.tensor(STD))
    assert backbone.architecture()["projection_dim"] == PROJECTION
    assert backbone.architecture()["vision_config"]["patch_size"] == PATCH_SIZE


def test_frame_features_match_get_image_features(backbone):
    frames = np.random.default_rng(0).integers(0, 256, size=(3, 40, 56, 3), dtype=np.uint8)  # resized and cropped
    pixels = backbone.preprocess(frames)
    assert pixels.shape == (3, 3, IMAGE_SIZE, IMAGE_SIZE)
    cls, patches = backbone.frame_features(frames)
    assert cls.shape == (3, PROJECTION) and patches.shape == (3, (IMAGE_SIZE // PATCH_SIZE) ** 2, PROJECTION)
    torch.testing.assert_close(cls, pooler(backbone.model.get_image_features(pixel_values=pixels)), atol=1e-5, rtol=0)
    # patches: the same post-LayerNorm + projection, per position and per image
    hidden = backbone.model.vision_model(pixel_values=pixels).last_hidden_state
    expected = backbone.model.visual_projection(backbone.model.vision_model.post_layernorm(hidden[:, 1:]))
    torch.testing.assert_close(patches, expected, atol=1e-5, rtol=0)
    assert patches[0].std(dim=0).mean() > 1e-3
    assert not torch.allclose(patches[0], patches[1])


def test_text_features_match_get_text_features(backbone):
    pooled, tokens, lengths = backbone.text_features(TEXTS)
    ids = backbone.tokenizer(TEXTS, padding="max_length", max_length=CONTEXT, truncation=True, return_tensors="pt")["input_ids"]
    assert pooled.shape == (3, PROJECTION) and tokens.shape == (3, CONTEXT, PROJECTION)
    torch.testing.assert_close(pooled, pooler(backbone.model.get_text_features(input_ids=ids)), atol=1e-5, rtol=0)
    # lengths: start of text, the text's tokens, end of text; the last text is cut to the context and still ends in EOT
    unpadded = backbone.token_lengths(TEXTS)
    assert unpadded[2] > CONTEXT and lengths.tolist() == unpadded[:2] + [CONTEXT]
    eos = backbone.tokenizer.eos_token_id
    for i, n in enumerate(lengths.tolist()):
        assert ids[i, n - 1] == eos and (ids[i, : n - 1] != eos).all()
        torch.testing.assert_close(tokens[i, n - 1], pooled[i])
    assert lengths[1] < lengths[0]
    # tokens past each length do not reach pooled: other ids there give the same vector at the end-of-text position
    scrambled = ids.clone()
    noise = torch.randint(0, eos - 1, ids.shape, generator=torch.Generator().manual_seed(0))
    past = torch.arange(CONTEXT)[None] >= lengths[:, None]
    scrambled[past] = noise[past]
    hidden = backbone.model.text_model(input_ids=scrambled).last_hidden_state
    again = backbone.model.text_projection(hidden)[torch.arange(3), lengths - 1]
    torch.testing.assert_close(again, pooled, atol=1e-5, rtol=0)


@pytest.mark.parametrize("pretrained", [None, "/nowhere/tiny-hf-clip", "file"])
def test_missing_checkpoint_directory_is_a_clear_error(tmp_path, pretrained):
    if pretrained == "file":
        pretrained = str(tmp_path / "model.safetensors")
        Path(pretrained).write_bytes(b"not a directory")
    with pytest.raises(FileNotFoundError) as info:
        load_backbone(BackboneSpec("tiny", pretrained, 0, "transformers"))
    message = str(info.value)
    assert repr(pretrained) in message and "from disk" in message and "hub" in message


def test_unknown_library_is_an_error():
    with pytest.raises(ValueError, match=r"unknown backbone library 'jax'.*open_clip, transformers"):
        load_backbone(BackboneSpec(library="jax"))


def test_features_stage_with_transformers(checkpoint, tmp_path, monkeypatch):
    """The stage end to end on random frames; the store records the library, and the backbone train rebuilds from it
    (backbone_on_the_fly) gives the stored features."""
    from cater.features import CachedFeatures
    from cater.stages import features as stage

    from helpers.features_inputs import write_features_inputs

    monkeypatch.chdir(tmp_path)
    write_features_inputs(tmp_path, size=48)
    params = load_params(REPO_PARAMS)
    params["frames"]["num_frames"] = 4
    params["features"] = {**params["features"], "device": "cpu", "library": "transformers", "backbone": "tiny-hf-clip",
                          "pretrained": str(checkpoint)}
    params["prompts"]["generators"] = {"gpt": {"backend": "openai", "model": "gpt-4o-mini"}}
    with pytest.raises(ValueError, match="features.pretrained is the machine path"):
        stage.run(params, None)  # a machine path would enter data/features/index.json
    (tmp_path / "models").mkdir()
    (tmp_path / "models/tiny-hf-clip").symlink_to(checkpoint, target_is_directory=True)
    params["features"]["pretrained"] = "models/tiny-hf-clip"
    checkpoint = Path("models/tiny-hf-clip")

    stage.run(params, None)
    store = CachedFeatures(tmp_path / "data/features")
    assert store.embed_dim == PROJECTION
    assert store.index["backbone"] == {"name": "tiny-hf-clip", "pretrained": str(checkpoint), "seed": params["features"]["seed"],
                                       "library": "transformers"}
    row = store.index["video_ids"].index("v2")
    cls, patches = store.video([row])
    assert cls.shape == (1, 4, PROJECTION) and patches.shape == (1, 4, (IMAGE_SIZE // PATCH_SIZE) ** 2, PROJECTION)
    assert store.pooled([0]).abs().sum() > 0

    # train with backbone_on_the_fly rebuilds this backbone from the store's record and gets the stored features
    from cater.stages import train as train_stage

    params["train"] = {**params["train"], "backbone_on_the_fly": True, "prompt_generator": "gpt",
                       "distill": {**params["train"]["distill"], "mode": "none"}}
    _, _, tensors, batcher = train_stage.prepare(params)
    assert isinstance(batcher.backbone, FrozenHFCLIP) and batcher.backbone.spec.pretrained == str(checkpoint)
    split = tensors["val"]
    live_cls, live_patches = batcher.visual(split, torch.tensor([0]))
    stored_cls, stored_patches = store.video(split.video_row[torch.tensor([0])])
    torch.testing.assert_close(live_cls, stored_cls, atol=2e-3, rtol=2e-3)  # stored in fp16
    torch.testing.assert_close(live_patches, stored_patches, atol=2e-3, rtol=2e-3)
    assert live_patches.abs().mean() > 1e-2


def _write(tmp_path: Path, params: dict) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


def test_params_schema_features_library(tmp_path):
    params = load_params(REPO_PARAMS)
    chosen = {**params, "features": {**params["features"], "library": "transformers"}}
    assert load_params(_write(tmp_path, chosen))["features"]["library"] == "transformers"
    params["features"].pop("library", None)
    assert "library" not in load_params(_write(tmp_path, params))["features"]  # optional: open_clip when absent
    path = _write(tmp_path, {**params, "features": {**params["features"], "library": "tensorflow"}})
    with pytest.raises(ConfigError) as info:
        load_params(path)
    message = str(info.value)
    assert str(path) in message and "features.library" in message and "'tensorflow'" in message
    assert "open_clip, transformers" in message
