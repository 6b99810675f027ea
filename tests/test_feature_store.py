"""The sharded feature store (cater.features): what is written is what is read, in any order, lazily."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from cater.features import CachedFeatures, FeatureStoreWriter, ShardReader, ShardWriter


@pytest.mark.parametrize("shape,dtype", [((3, 5), np.float16), ((), np.int64), ((2,), np.float32)])
def test_shards_read_back_exactly_what_was_written(tmp_path, shape, dtype):
    rng = np.random.default_rng(0)
    data = (rng.normal(size=(23, *shape)) * 100).astype(dtype)
    writer = ShardWriter(tmp_path, "t", rows_per_shard=5)
    for chunk in np.split(data, [2, 9, 10, 22]):  # appends that straddle shard boundaries
        writer.append(chunk)
    meta = writer.close()
    assert meta["rows"] == 23 and meta["shards"] == [5, 5, 5, 5, 3]
    assert sorted(p.name for p in (tmp_path / "t").iterdir()) == [f"00000{i}.safetensors" for i in range(5)]
    reader = ShardReader(tmp_path, "t", meta)
    np.testing.assert_array_equal(reader.get(np.arange(23)), data)
    index = rng.integers(0, 23, size=(4, 7))  # any shape, any order, repeats, across shards
    np.testing.assert_array_equal(reader.get(index), data[index])
    np.testing.assert_array_equal(reader.get(np.array([22, 4, 5, 4])), data[[22, 4, 5, 4]])
    with pytest.raises(IndexError):
        reader.get([23])


def test_a_shard_of_the_wrong_shape_is_named(tmp_path):
    writer = ShardWriter(tmp_path, "t", rows_per_shard=4)
    writer.append(np.zeros((6, 3), np.float16))
    meta = writer.close()
    meta_wrong = {**meta, "shape": [4]}
    with pytest.raises(ValueError, match=r"t/000000\.safetensors: feature shard damaged"):
        ShardReader(tmp_path, "t", meta_wrong).get([0])
    with pytest.raises(ValueError, match="rows of shape"):
        writer.append(np.zeros((1, 4), np.float16))


def test_the_store_round_trip(tmp_path):
    rng = np.random.default_rng(1)
    T, P, D, L = 3, 4, 8, 6
    video = rng.normal(size=(70, T, 1 + P, D)).astype(np.float16)  # 2 shards of 64
    pooled = rng.normal(size=(11, D)).astype(np.float16)
    lengths = rng.integers(1, L + 1, size=9)
    tokens = rng.normal(size=(9, L - 1, D)).astype(np.float16)  # narrower than token_length: padded
    store = FeatureStoreWriter(tmp_path)
    store.add_video(video[:30])
    store.add_video(video[30:])
    store.add_pooled(pooled)
    store.add_prompt_tokens(tokens, np.minimum(lengths, L - 1), L)
    store.close(backbone={"name": "x"}, num_frames=T, embed_dim=D, token_length=L, video_ids=[f"v{i}" for i in range(70)],
                samples={}, prompts={"g": {}})
    features = CachedFeatures(tmp_path)
    assert (features.num_frames, features.embed_dim, features.token_length) == (T, D, L)
    rows = torch.tensor([69, 0, 64, 63])
    cls, patches = features.video(rows)
    np.testing.assert_array_equal(cls.numpy(), video[rows.numpy(), :, 0].astype(np.float32))
    np.testing.assert_array_equal(patches.numpy(), video[rows.numpy(), :, 1:].astype(np.float32))
    ids = torch.tensor([[3, 3], [10, 0]])
    np.testing.assert_array_equal(features.pooled(ids).numpy(), pooled[ids.numpy()].astype(np.float32))
    got = features.prompt_tokens(torch.arange(9)).numpy()
    kept = np.minimum(lengths, L - 1)
    for i in range(9):
        np.testing.assert_array_equal(got[i, : kept[i]], tokens[i, : kept[i]].astype(np.float32))
        assert not got[i, kept[i]:].any()  # zero past the length
    assert features.prompt_lengths.tolist() == kept.tolist()


def test_an_old_format_store_is_refused_with_the_fix(tmp_path):
    (tmp_path / "index.json").write_text('{"video_ids": []}')
    with pytest.raises(ValueError, match=r"format None, this code reads format 2.*dvc repro --force features"):
        CachedFeatures(tmp_path)


def test_teacher_hidden_states_are_read_per_batch_never_held(tmp_path):
    from cater.io import encode_array, write_jsonl
    from cater.train import TeacherHidden, load_teacher_outputs

    vectors = [np.full(4096, i, np.float32) for i in range(3)]
    vectors[1][7] = np.nan
    rows = [{"key": f"s{i}", "choice_logits": [0.1, 0.2], "hard_idx": 1, "hidden": encode_array(v)} for i, v in enumerate(vectors)]
    write_jsonl(tmp_path / "outputs.jsonl", rows)
    dropped = load_teacher_outputs(tmp_path / "outputs.jsonl", keep_hidden=False)
    assert all("hidden" not in row and "hidden_at" not in row for row in dropped.values())
    kept = load_teacher_outputs(tmp_path / "outputs.jsonl")
    assert all("hidden" not in row for row in kept.values())  # no vector in memory, only where to find it
    assert [kept[f"s{i}"]["hidden_finite"] for i in range(3)] == [True, False, True]
    hidden = TeacherHidden(tmp_path / "outputs.jsonl", [kept["s2"]["hidden_at"], None, kept["s0"]["hidden_at"]], 4096)
    got = hidden[torch.tensor([0, 1, 2, 0])]
    assert hidden.shape == (3, 4096) and got.shape == (4, 4096)
    assert torch.equal(got[0], torch.full((4096,), 2.0)) and not got[1].any() and torch.equal(got[2], torch.zeros(4096))
    assert torch.equal(hidden[2], torch.zeros(4096)) and torch.equal(hidden[0], got[3])


def test_readers_keep_few_files_open_read_zero_rows_and_pickle(tmp_path):
    import pickle

    import cater.features as store

    writer = ShardWriter(tmp_path, "t", rows_per_shard=1)
    writer.append(np.arange(80, dtype=np.float32).reshape(80, 1))
    reader = ShardReader(tmp_path, "t", writer.close())
    assert reader.get(np.arange(80)).ravel().tolist() == list(range(80))  # 80 shards, one row each
    assert len(reader._files) == store.MAX_OPEN_SHARDS
    assert reader.get(np.array([], dtype=np.int64)).shape == (0, 1)
    copy = pickle.loads(pickle.dumps(reader))  # e.g. into a DataLoader worker: opens its own files
    assert not copy._files and copy.get([79]).item() == 79.0
    (tmp_path / "t" / "000005.safetensors").unlink()
    with pytest.raises(ValueError, match=r"t/000005\.safetensors: feature shard missing.*dvc checkout"):
        copy.get([5])


class InMemoryFeatures:
    """The store's whole content as in-memory tensors (what format 1 held): the reference that training from
    the lazily read shards must match bit for bit."""

    def __init__(self, store: CachedFeatures):
        self.index, self.video_row = store.index, store.video_row
        self.embed_dim, self.num_frames, self.token_length = store.embed_dim, store.num_frames, store.token_length
        tensors = store.index["tensors"]
        self.all_video = store.video(torch.arange(tensors["video"]["rows"]))
        self.all_pooled = store.pooled(torch.arange(tensors["pooled"]["rows"]))
        self.all_prompts = store.prompt_tokens(torch.arange(tensors["prompt_tokens"]["rows"]))
        self.prompt_lengths = store.prompt_lengths
        self.prompt_ids = store.prompt_ids

    def video(self, rows):
        return self.all_video[0][rows], self.all_video[1][rows]

    def pooled(self, ids):
        return self.all_pooled[ids]

    def prompt_tokens(self, ids):
        return self.all_prompts[ids]


def test_training_from_the_lazy_store_equals_training_from_memory(tmp_path):
    from test_train_ddp import VIDEOS, build_cache, config

    from cater.data.schema import read_samples
    from cater.train import FeatureBatcher, SplitTensors, load_teacher_outputs, train

    build_cache(tmp_path)
    torch.set_num_threads(1)
    cfg = config(epochs=2)
    lazy = CachedFeatures(tmp_path / "features")
    teacher = load_teacher_outputs(tmp_path / "teacher.jsonl")
    checkpoints = []
    for features in (lazy, InMemoryFeatures(lazy)):
        splits = {name: read_samples(tmp_path / f"{name}.jsonl") for name in VIDEOS}
        train_split = SplitTensors(splits["train"], features, cfg, teacher, None)
        val_split = SplitTensors(splits["val"], features, cfg, None, None)
        checkpoints.append(train(cfg, train_split, val_split, FeatureBatcher(features), features))
    for key, value in checkpoints[0]["model"].items():
        assert torch.equal(value, checkpoints[1]["model"][key]), key
    assert checkpoints[0]["val_accuracy"] == checkpoints[1]["val_accuracy"]
