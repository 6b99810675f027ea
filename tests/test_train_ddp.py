"""The training loop on a tiny synthetic feature cache: in-process, determinism, and 2-process DDP (gloo, CPU)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from cater.data.schema import Sample, read_samples, write_samples
from cater.features import CachedFeatures, FeatureStoreWriter
from cater.io import write_jsonl
from cater.teachers.base import TeacherOutput
from cater.teachers.runner import output_row
from cater.train import (
    FeatureBatcher,
    SplitTensors,
    TrainConfig,
    derangement,
    load_student,
    load_teacher_outputs,
    predict,
    save_student,
    train,
)

T, P, D, L, HIDDEN = 4, 4, 16, 6, 12
GENERATOR = "annotations"
VIDEOS = {"train": 12, "val": 4, "test": 4}


def build_cache(root: Path, seed: int = 0) -> dict[str, list[Sample]]:
    """Write a feature store (cater.features, the features stage's format), splits and teacher rows.

    Each video has a random "concept" c; its frames lie near c and its correct answer's text near R c for a fixed
    rotation R, so the frozen features alone are at chance and the student has to learn the mapping.
    """
    rng = np.random.default_rng(seed)
    rotation = np.linalg.qr(rng.normal(size=(D, D)))[0]
    strings: list[str] = []  # sample strings: pooled vectors
    vectors: list[np.ndarray] = []
    prompt_strings: list[str] = []  # prompt strings: token vectors
    prompt_vectors: list[np.ndarray] = []

    def sid(text: str, vector: np.ndarray) -> int:
        strings.append(text)
        vectors.append(vector)
        return len(strings) - 1

    def pid(text: str, vector: np.ndarray) -> int:
        prompt_strings.append(text)
        prompt_vectors.append(vector)
        return len(prompt_strings) - 1

    video_ids, cls, patches, per_sample, prompts = [], [], [], {}, {}
    splits: dict[str, list[Sample]] = {}
    teacher_rows = []
    for split, count in VIDEOS.items():
        splits[split] = []
        for v in range(count):
            vid = f"{split}-{v:02d}"
            concept = rng.normal(size=D)
            video_ids.append(vid)
            cls.append(concept + 0.5 * rng.normal(size=(T, D)))
            patches.append(concept + rng.normal(size=(T, P, D)))
            prompts[vid] = {kind: [pid(f"{vid} {kind} prompt {f}", concept + rng.normal(size=D)) for f in range(T)]
                            for kind in ("event", "frame")}
            for q in range(2):
                n_choices = 3 + (v + q) % 3  # 3..5 choices: padding varies per sample
                answer = int(rng.integers(n_choices))
                choices = [f"{vid} option {q}.{c}" for c in range(n_choices)]
                question = f"Question {q} about {vid}?"
                base = [rotation @ concept if c == answer else rng.normal(size=D) for c in range(n_choices)]
                sample = Sample(id=f"{vid}-q{q}", dataset="synthetic", split=split, video=f"{vid}.mp4", video_id=vid, question=question,
                                choices=choices, answer_idx=answer, question_type=f"type{q}")
                splits[split].append(sample)
                per_sample[sample.id] = {
                    "question": sid(question, rng.normal(size=D)),
                    "qa": [sid(f"{question} {c}", b + 0.3 * rng.normal(size=D)) for c, b in zip(choices, base)],
                    "answer": [sid(c, b + 0.3 * rng.normal(size=D)) for c, b in zip(choices, base)],
                }
                if split == "train" and not (v == 0 and q == 0):  # one training sample has no teacher output
                    logits = rng.normal(size=n_choices)
                    logits[answer] += 1.5
                    teacher_rows.append(output_row(TeacherOutput(id=sample.id, choice_logits=logits.tolist(),
                                                                 hard_idx=int(logits.argmax()),
                                                                 hidden=rng.normal(size=HIDDEN).astype(np.float32))))
    store = FeatureStoreWriter(root / "features")
    store.add_video(np.concatenate([np.asarray(cls)[:, :, None], np.asarray(patches)], axis=2))  # CLS first
    store.add_pooled(np.stack(vectors))
    lengths = rng.integers(2, L + 1, size=len(prompt_strings))
    tokens = rng.normal(size=(len(prompt_strings), L, D))
    tokens[np.arange(len(prompt_strings)), lengths - 1] = np.stack(prompt_vectors)  # the end-of-text token
    store.add_prompt_tokens(tokens, lengths, L)
    store.close(backbone={"name": "cater-tiny", "pretrained": None, "seed": 0}, num_frames=T, embed_dim=D, token_length=L,
                video_ids=video_ids, samples=per_sample, prompts={GENERATOR: prompts})
    for split, samples in splits.items():
        write_samples(root / f"{split}.jsonl", samples)
    write_jsonl(root / "teacher.jsonl", teacher_rows)
    return splits


def config(**overrides) -> TrainConfig:
    base = dict(prompt_variant="event", prompt_generator=GENERATOR, teacher="synthetic",
                distill={"mode": "hybrid", "temperature": 2.0, "align_weight": 0.5},
                student={"heads": 2, "cross_layers": 1, "temporal_layers": 1, "dropout": 0.1}, epochs=3, batch_size=8,
                lr=3e-3, seed=0)
    base.update(overrides)
    return TrainConfig(**base)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """These tensors are tiny: one intra-op thread is faster and keeps runs comparable on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("train")
    build_cache(root)
    return root


def prepare(root: Path, cfg: TrainConfig):
    features = CachedFeatures(root / "features")
    splits = {name: read_samples(root / f"{name}.jsonl") for name in VIDEOS}
    teacher = load_teacher_outputs(root / "teacher.jsonl") if cfg.distill.mode != "none" else None
    random_map = derangement(sorted({s.video_id for s in splits["train"]}), cfg.seed) if cfg.prompt_variant == "random" else None
    train_split = SplitTensors(splits["train"], features, cfg, teacher, random_map)
    val_split = SplitTensors(splits["val"], features, cfg, None, random_map and derangement(
        sorted({s.video_id for s in splits["val"]}), cfg.seed))
    return features, train_split, val_split, FeatureBatcher(features)


def run_training(root: Path, cfg: TrainConfig):
    features, train_split, val_split, batcher = prepare(root, cfg)
    logged = []
    checkpoint = train(cfg, train_split, val_split, batcher, features, log=lambda epoch, m: logged.append((epoch, m)))
    return checkpoint, logged


# ---------------------------------------------------------------- building the split tensors

def test_split_tensors_from_the_cache(cache):
    cfg = config()
    features, train_split, val_split, batcher = prepare(cache, cfg)
    assert features.embed_dim == D and features.num_frames == T
    assert len(train_split) == 24 and len(val_split) == 8
    n_choices = train_split.choice_mask.sum(1)
    assert set(n_choices.tolist()) == {3, 4, 5}
    assert int(train_split.teacher_valid.sum()) == 23 and not train_split.teacher_valid[0]
    assert train_split.teacher_hidden.shape == (24, HIDDEN) and torch.all(train_split.teacher_hidden[0] == 0)
    assert torch.all(train_split.teacher_logits[0] == 0)  # missing teacher: nothing, never the label
    assert train_split.missing_prompts == 0 and torch.all(train_split.prompt_ids >= 0)
    batch = batcher(train_split, torch.tensor([0, 5, 7]))
    assert batch["cls"].shape == (3, T, D) and batch["patches"].shape == (3, T, P, D)
    assert batch["prompt_tokens"].shape == (3, T, L, D) and batch["has_prompt"].all()
    assert batch["choices"].shape == (3, 5, D)
    # the padding mask follows the stored lengths
    ids = train_split.prompt_ids[5, 0]
    assert int((~batch["prompt_pad"][1, 0]).sum()) == int(features.prompt_lengths[ids])


def test_prompt_variants_pick_their_strings(cache):
    features = CachedFeatures(cache / "features")
    samples = read_samples(cache / "train.jsonl")
    prompts = features.prompt_ids(GENERATOR)
    event = SplitTensors(samples, features, config(prompt_variant="event"), None, None)
    frame = SplitTensors(samples, features, config(prompt_variant="frame"), None, None)
    none = SplitTensors(samples, features, config(prompt_variant="none"), None, None)
    mapping = derangement(sorted({s.video_id for s in samples}), 0)
    shuffled = SplitTensors(samples, features, config(prompt_variant="random"), None, mapping)
    for i, s in enumerate(samples):
        assert event.prompt_ids[i].tolist() == prompts[s.video_id]["event"]
        assert frame.prompt_ids[i].tolist() == prompts[s.video_id]["frame"]
        assert shuffled.prompt_ids[i].tolist() == prompts[mapping[s.video_id]]["event"] != event.prompt_ids[i].tolist()
    assert torch.all(none.prompt_ids == -1)
    with pytest.raises(KeyError, match="no prompts of generator 'gpt'"):
        SplitTensors(samples, features, config(prompt_generator="gpt"), None, None)


def test_derangement_is_a_seeded_fixed_point_free_permutation():
    items = [f"v{i}" for i in range(9)]
    mapping = derangement(items, 3)
    assert sorted(mapping) == items and sorted(mapping.values()) == items
    assert all(k != v for k, v in mapping.items())
    assert mapping == derangement(list(reversed(items)), 3)
    assert mapping != derangement(items, 4)
    with pytest.raises(ValueError, match="at least 2 videos"):
        derangement(["only"], 0)


def test_load_teacher_outputs_reads_the_teacher_stage_rows(tmp_path):
    rows = [output_row(TeacherOutput(id="s1", choice_logits=[0.1, 2.0], hard_idx=1, hidden=None)),
            output_row(TeacherOutput(id="s2", choice_logits=None, hard_idx=None, hidden=None, missing_reason="too long"))]
    write_jsonl(tmp_path / "outputs.jsonl", rows)
    loaded = load_teacher_outputs(tmp_path / "outputs.jsonl")
    assert sorted(loaded) == ["s1", "s2"] and loaded["s1"]["choice_logits"] == [0.1, 2.0]


def test_missing_teacher_outputs_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="teacher outputs missing"):
        load_teacher_outputs(tmp_path / "nope.jsonl")


# ---------------------------------------------------------------- the loop, in process

def test_train_in_process_and_determinism(cache, tmp_path):
    cfg = config()
    first, logged = run_training(cache, cfg)
    second, logged_again = run_training(cache, cfg)
    assert [e for e, _ in logged] == [0, 1, 2]
    assert {"loss/total", "loss/label", "loss/hard", "loss/soft", "loss/align", "val/accuracy"} <= set(logged[0][1])
    assert all(np.isfinite(v) for _, m in logged for v in m.values())
    assert logged == logged_again  # same seed: identical metrics, epoch by epoch
    for key, value in first["model"].items():
        assert torch.equal(value, second["model"][key]), key
    assert first["val_accuracy"] == max(m["val/accuracy"] for _, m in logged)
    assert first["best_epoch"] == [m["val/accuracy"] for _, m in logged].index(first["val_accuracy"])
    assert first["train_config"]["distill"]["mode"] == "hybrid"
    # the saved checkpoint reloads into a student that reproduces the selected model's predictions
    save_student(first, tmp_path / "student.safetensors")
    student, _ = load_student(tmp_path / "student.safetensors")
    features, _, val_split, batcher = prepare(cache, cfg)
    logits = predict(student, batcher, val_split)
    assert logits.shape == (8, 5)
    acc = float((logits.argmax(1) == val_split.labels).float().mean())
    assert acc == pytest.approx(first["val_accuracy"])


def test_different_seed_gives_a_different_run(cache):
    a, _ = run_training(cache, config(epochs=1))
    b, _ = run_training(cache, config(epochs=1, seed=1))
    assert any(not torch.equal(v, b["model"][k]) for k, v in a["model"].items())


def test_training_learns_the_synthetic_task(cache):
    """The frozen features alone are near chance; the student learns the hidden mapping."""
    checkpoint, logged = run_training(cache, config(epochs=12, distill={"mode": "none"}))
    losses = [m["loss/label"] for _, m in logged]
    assert losses[-1] < 0.2 * losses[0]
    assert checkpoint["val_accuracy"] > logged[0][1]["val/accuracy"]


# ---------------------------------------------------------------- the loop under DDP (2 CPU processes, gloo)

DDP_SCRIPT = textwrap.dedent('''
    import json, sys
    from pathlib import Path

    import torch
    from accelerate import PartialState

    sys.path.insert(0, sys.argv[2])
    from test_train_ddp import config, prepare
    from cater.train import save_student, train

    root = Path(sys.argv[1])
    cfg = config()
    features, train_split, val_split, batcher = prepare(root, cfg)
    logged = []
    checkpoint = train(cfg, train_split, val_split, batcher, features, log=lambda e, m: logged.append(m))
    state = PartialState()
    out = root / "ddp"
    torch.save(checkpoint["model"], out / f"weights-rank{state.process_index}.pt")
    (out / f"rank{state.process_index}.json").write_text(json.dumps(
        {"world": state.num_processes, "backend": str(state.backend), "logged": len(logged),
         "val_accuracy": checkpoint["val_accuracy"], "best_epoch": checkpoint["best_epoch"]}))
    if state.is_main_process:
        save_student(checkpoint, out / "student.safetensors")
    state.wait_for_everyone()
''')


@pytest.mark.slow
def test_train_under_torchrun_two_processes(cache, tmp_path):
    script = tmp_path / "ddp_train.py"
    script.write_text(DDP_SCRIPT)
    (cache / "ddp").mkdir(exist_ok=True)
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script), str(cache),
         str(Path(__file__).parent)],
        env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    out = cache / "ddp"
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert all(r["world"] == 2 and r["backend"] == "gloo" for r in ranks)  # really distributed
    assert [r["logged"] for r in ranks] == [3, 0]  # only the main process logs
    assert ranks[0]["val_accuracy"] == ranks[1]["val_accuracy"] and ranks[0]["best_epoch"] == ranks[1]["best_epoch"]
    w0, w1 = (torch.load(out / f"weights-rank{r}.pt") for r in (0, 1))
    for key in w0:  # DDP kept the replicas in sync
        torch.testing.assert_close(w0[key], w1[key], atol=0, rtol=0)
    assert sorted(p.name for p in out.glob("*student*")) == ["student.safetensors"]  # written once, no temp leftovers
    _, ddp_checkpoint = load_student(out / "student.safetensors")
    single, _ = run_training(cache, config())
    assert ddp_checkpoint["model"].keys() == single["model"].keys()  # unwrapped: no "module." prefixes
    assert ddp_checkpoint["student_config"] == single["student_config"]
