"""The frozen open_clip backbone: token features agree with open_clip's own encoders."""
from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
import torch

from cater.models.backbone import BackboneSpec, FrozenBackbone

TEXTS = ["A red circle appears and moves left.", "Nothing new happens.", "Which shape appeared first? blue square"]


@pytest.fixture(scope="module")
def backbone() -> FrozenBackbone:
    return FrozenBackbone(BackboneSpec())  # cater-tiny, random init from seed 0


@pytest.fixture(scope="module")
def frames() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, size=(3, 64, 64, 3), dtype=np.uint8)


def test_is_frozen(backbone):
    assert not any(p.requires_grad for p in backbone.parameters())
    assert not backbone.model.training
    assert backbone.image_size == 64 and backbone.embed_dim == 64


def test_frame_features_match_encode_image(backbone, frames):
    cls, patches = backbone.frame_features(frames)
    expected = backbone.model.encode_image(backbone.preprocess(frames))
    assert cls.shape == (3, 64) and patches.shape == (3, (64 // 16) ** 2, 64)
    torch.testing.assert_close(cls, expected, atol=1e-5, rtol=0)
    assert not backbone.model.visual.output_tokens  # the flag is restored
    # patch tokens are per-position and per-image, not copies of one vector
    assert patches[0].std(dim=0).mean() > 1e-3
    assert not torch.allclose(patches[0], patches[1])


def test_text_features_match_encode_text(backbone):
    pooled, tokens, lengths = backbone.text_features(TEXTS)
    ids = backbone.tokenizer(TEXTS)
    expected = backbone.model.encode_text(ids)
    assert pooled.shape == (3, 64) and tokens.shape == (3, 32, 64)
    torch.testing.assert_close(pooled, expected, atol=1e-5, rtol=0)
    # lengths count the tokens up to and including end-of-text; pooled is the token at that position
    assert lengths.tolist() == [int((row != 0).sum()) for row in ids]
    for i, n in enumerate(lengths.tolist()):
        torch.testing.assert_close(tokens[i, n - 1], pooled[i])
    assert lengths[1] < lengths[0]


def test_preprocess_matches_open_clip_transform(backbone):
    import open_clip
    from PIL import Image

    _, _, transform = open_clip.create_model_and_transforms("cater-tiny")
    rng = np.random.default_rng(1)
    native = rng.integers(0, 256, size=(64, 64, 3), dtype=np.uint8)
    torch.testing.assert_close(backbone.preprocess(native[None])[0], transform(Image.fromarray(native)), atol=1e-5, rtol=0)
    # a wide image: short side resized, centre crop; a smooth image agrees up to the resampler's rounding
    yy, xx = np.mgrid[0:96, 0:160]
    wide = np.stack([xx * 255 / 160, yy * 255 / 96, (xx + yy) * 255 / 256], -1).astype(np.uint8)
    ours = backbone.preprocess(wide[None])[0]
    assert ours.shape == (3, 64, 64)
    assert (ours - transform(Image.fromarray(wide))).abs().mean() < 0.03


def test_deterministic_init_from_seed(backbone):
    same = FrozenBackbone(BackboneSpec(seed=0))
    other = FrozenBackbone(BackboneSpec(seed=1))
    ours = backbone.model.state_dict()
    for key, value in same.model.state_dict().items():
        assert torch.equal(value, ours[key]), key
    differing = [k for k, v in other.model.state_dict().items() if v.is_floating_point() and not torch.equal(v, ours[k])]
    assert "token_embedding.weight" in differing and "visual.conv1.weight" in differing


def test_local_checkpoint_is_loaded(backbone, tmp_path, frames):
    path = tmp_path / "tiny.pt"
    torch.save(backbone.model.state_dict(), path)
    loaded = FrozenBackbone(BackboneSpec(pretrained=str(path), seed=123))  # the seed must not matter
    torch.testing.assert_close(loaded.frame_features(frames)[0], backbone.frame_features(frames)[0])


def test_bad_specs():
    with pytest.raises(ValueError, match="unknown open_clip architecture 'no-such-net'"):
        FrozenBackbone(BackboneSpec(name="no-such-net"))
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        FrozenBackbone(BackboneSpec(pretrained="/nowhere/missing.pt"))


def test_vit_b_16_builds_with_random_weights():
    vit = FrozenBackbone(BackboneSpec(name="ViT-B-16"))
    assert vit.image_size == 224 and vit.embed_dim == 512
    cls, patches = vit.frame_features(np.zeros((1, 240, 320, 3), dtype=np.uint8))
    assert cls.shape == (1, 512) and patches.shape == (1, 196, 512)
    pooled, tokens, _ = vit.text_features(["a dog"])
    assert pooled.shape == (1, 512) and tokens.shape == (1, 77, 512)
    torch.testing.assert_close(pooled, vit.model.encode_text(vit.tokenizer(["a dog"])), atol=1e-5, rtol=0)


def test_feature_cache_key_follows_the_architecture_and_the_weights(tmp_path):
    """A changed open_clip config or checkpoint is a new model: its features are never served from the cache."""
    from cater.stages.features import cache_key

    spec = BackboneSpec("cater-tiny", None, 0)
    config = {"embed_dim": 64, "vision_cfg": {"patch_size": 16}}
    base = cache_key(spec, config, 64, 8)
    assert cache_key(spec, config, 64, 8) == base
    assert cache_key(spec, {**config, "vision_cfg": {"patch_size": 8}}, 64, 8) != base
    assert cache_key(BackboneSpec("cater-tiny", None, 1), config, 64, 8) != base
    weights = tmp_path / "weights.bin"
    weights.write_bytes(b"one")
    first = cache_key(BackboneSpec("cater-tiny", str(weights), 0), config, 64, 8)
    weights.write_bytes(b"two")
    assert cache_key(BackboneSpec("cater-tiny", str(weights), 0), config, 64, 8) != first


@pytest.mark.parametrize("pool_type", ["eos", "last", "first"])
def test_text_features_follow_the_models_text_pool_type(tmp_path, pool_type):
    """open_clip configs may pool the text at the eos id, the last or the first position, and may project with a
    Linear layer: `pooled` must still be exactly `encode_text`, and `lengths` still end at end-of-text."""
    import json

    import open_clip

    from cater.models.backbone import CONFIG_DIR

    config = json.loads((CONFIG_DIR / "cater-tiny.json").read_text())
    config["text_cfg"].update(pool_type=pool_type, eos_id=49407, proj_type="linear", proj_bias=True)
    name = f"cater-tiny-pool-{pool_type}"
    (tmp_path / f"{name}.json").write_text(json.dumps(config))
    open_clip.add_model_config(tmp_path)
    model = FrozenBackbone(BackboneSpec(name=name))
    assert model.model.text_pool_type == pool_type
    assert isinstance(model.model.text_projection, torch.nn.Linear) and model.embed_dim == 64
    pooled, tokens, lengths = model.text_features(TEXTS)
    ids = model.tokenizer(TEXTS)
    torch.testing.assert_close(pooled, model.model.encode_text(ids), atol=1e-5, rtol=0)
    assert lengths.tolist() == [int((row != 0).sum()) for row in ids]
    position = {"eos": lengths - 1, "last": torch.full_like(lengths, ids.shape[1] - 1), "first": torch.zeros_like(lengths)}
    for i, p in enumerate(position[pool_type].tolist()):
        torch.testing.assert_close(tokens[i, p], pooled[i])
    if pool_type != "eos":  # the pooled vector is not the end-of-text token's: the old argmax rule would differ
        assert not torch.allclose(tokens[0, lengths[0] - 1], pooled[0])
