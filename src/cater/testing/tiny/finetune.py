"""Fine-tune a teacher on labelled multiple-choice samples, then save it in its own checkpoint format.

The loss is the cross-entropy of the option letters' next-token logits at the answer position
(`Teacher.letter_logits`: the same prompt, encoding and forward pass as `Teacher.score`) against
the labels. The labels reach the loss only: a `TeacherInput` has no answer field, so the prompt
cannot contain it. With `shuffle_options` every epoch sees each sample with its options in a fresh
seeded order (the label follows its option), so the model cannot learn a preferred letter.

Deterministic: fixed thread count, `torch.use_deterministic_algorithms(True)`, seeded sample order,
option order and parameter noise (the model stays in eval mode, so no dropout). The same seed,
inputs, thread count and machine give the same weights.

    result = finetune(teacher, items, labels, epochs=8, lr=3e-3, batch_size=16, seed=0)
    save_finetuned(teacher, "models/tiny/videollava")

No DVC, no fixed paths: `scripts/make_tiny_models.py` drives it for the demo's tiny teachers.

What it achieves on the demo (measured; 600 train questions, 150 videos, 2 CPU cores, 1 thread): the tiny
random teachers do not become competent in a ~2-minute budget (about 300 steps each); they end at chance
(loss ln 5), predicting one letter. Two skills are missing, and neither comes within that budget:
- letter binding (output the letter of the option that matches): a text-only tiny LM given the answer's
  text in the question leaves chance only after ~500 steps (0.6 at ~1000-2000); with Video-LLaVA's 136
  random visual tokens in the sequence it is still at chance after 950 steps. With 2 options instead of 5
  it takes ~300 steps.
- visual generalisation: on count questions with a fixed option order (no binding needed) Video-LLaVA
  fits the train split (0.87) but reaches 0.29 on val: 150 videos are too few to learn counting from
  random weights. A wider LM (hidden 64), 3 layers, a word-level tokenizer or a smaller init did not
  change this within budget; lr 1e-2 diverges to a constant letter.
"""
from __future__ import annotations

import math
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import torch

from cater.io import atomic_directory
from cater.teachers.base import Teacher, TeacherError, TeacherInput


@dataclass
class FinetuneResult:
    epoch_loss: list[float] = field(default_factory=list)  # mean training loss of each epoch
    epoch_accuracy: list[float] = field(default_factory=list)  # accuracy on each epoch's (shuffled) batches
    train_accuracy: float = float("nan")  # after training, on the samples as given
    seconds: float = 0.0  # wall time of the training loop and the final accuracy pass
    steps: int = 0


@contextmanager
def deterministic_torch(threads: int | None) -> Iterator[None]:
    """Fixed thread count and deterministic algorithms inside the block; the caller's settings after."""
    old_threads = torch.get_num_threads()
    old_deterministic = torch.are_deterministic_algorithms_enabled()
    old_warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    try:
        if threads is not None:
            torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(True)
        yield
    finally:
        torch.use_deterministic_algorithms(old_deterministic, warn_only=old_warn_only)
        torch.set_num_threads(old_threads)


def permuted(item: TeacherInput, label: int, order: Sequence[int]) -> tuple[TeacherInput, int]:
    """`item` with its choices in `order` (new position -> old index) and the label that follows them."""
    order = [int(i) for i in order]
    choices = [item.choices[i] for i in order]
    return TeacherInput(item.id, item.frames, item.question, choices, item.subtitles), order.index(label)


def labelled_inputs(samples, frame_store) -> tuple[list[TeacherInput], list[int]]:
    """Teacher inputs built from `cater.data.schema.Sample`s as the teacher stage builds them (frames,
    question, choices, subtitles; never the answer), and the answers as a separate list."""
    items = [TeacherInput(s.id, frame_store.load(s.video_id), s.question, list(s.choices), s.subtitles) for s in samples]
    return items, [int(s.answer_idx) for s in samples]


def check_labels(items: Sequence[TeacherInput], labels: Sequence[int]) -> None:
    if len(items) != len(labels):
        raise TeacherError(f"fine-tuning: {len(items)} samples but {len(labels)} labels")
    if not items:
        raise TeacherError("fine-tuning: no samples")
    for item, label in zip(items, labels):
        if isinstance(label, bool) or not isinstance(label, (int, np.integer)) or not 0 <= label < len(item.choices):
            raise TeacherError(f"sample {item.id}: label {label!r} is not an option index (0..{len(item.choices) - 1})")


def accuracy(teacher: Teacher, items: Sequence[TeacherInput], labels: Sequence[int], batch_size: int = 32) -> float:
    """Share of `items` whose highest letter logit is the label (the choice `score` would make)."""
    return float(np.mean(predictions(teacher, items, batch_size) == np.asarray(labels)))


def predictions(teacher: Teacher, items: Sequence[TeacherInput], batch_size: int = 32) -> np.ndarray:
    """The argmax option of each item, through the differentiable path without autograd."""
    chosen = []
    with torch.inference_mode():
        for start in range(0, len(items), batch_size):
            chosen.append(teacher.letter_logits(list(items[start:start + batch_size])).argmax(-1).cpu())
    return torch.cat(chosen).numpy()


def finetune(
    teacher: Teacher,
    items: Sequence[TeacherInput],
    labels: Sequence[int],
    *,
    epochs: int = 8,
    lr: float = 3e-3,
    batch_size: int = 16,
    seed: int = 0,
    weight_decay: float = 0.0,
    warmup: float = 0.05,
    grad_clip: float | None = 1.0,
    shuffle_options: bool = True,
    threads: int | None = 1,
    progress: bool = True,
    log: Callable[[str], None] | None = print,
    name: str | None = None,
) -> FinetuneResult:
    """Train `teacher.trainable_parameters()` with AdamW on the letter cross-entropy, in place.

    Schedule: linear warm-up over `warmup` of the steps, then cosine decay to 0. Each epoch visits
    the samples in a seeded order. Returns the per-epoch loss and accuracy and the final accuracy on
    `items` as given; `log` (print by default) gets one line per epoch and the final accuracy.
    """
    check_labels(items, labels)
    if epochs < 1 or batch_size < 1 or lr <= 0:
        raise TeacherError(f"fine-tuning: need epochs >= 1, batch_size >= 1 and lr > 0 (got {epochs}, {batch_size}, {lr})")
    name = name or teacher.family
    emit = log or (lambda _line: None)
    result = FinetuneResult()
    rng = np.random.default_rng(seed)
    steps_per_epoch = math.ceil(len(items) / batch_size)
    total = epochs * steps_per_epoch
    warm = max(1, round(warmup * total))

    def schedule(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        return 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, total - warm)))

    start = time.perf_counter()
    with deterministic_torch(threads), torch.random.fork_rng(devices=[]), teacher.caching_frozen_inputs():
        torch.manual_seed(seed)
        params = teacher.trainable_parameters()
        if not params:
            raise TeacherError(f"{name}: no trainable parameters")
        optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        bar = _progress(total, f"fine-tune {name}", progress)
        try:
            for epoch in range(epochs):
                order = rng.permutation(len(items))
                loss_sum, correct = 0.0, 0
                for first in range(0, len(order), batch_size):
                    batch, targets = [], []
                    for i in order[first:first + batch_size]:
                        item, label = items[i], int(labels[i])
                        if shuffle_options:
                            item, label = permuted(item, label, rng.permutation(len(item.choices)))
                        batch.append(item)
                        targets.append(label)
                    target = torch.tensor(targets)
                    logits = teacher.letter_logits(batch)
                    target = target.to(logits.device)
                    loss = torch.nn.functional.cross_entropy(logits, target)
                    if not torch.isfinite(loss):
                        raise TeacherError(f"{name}: non-finite training loss at epoch {epoch + 1} (lower the learning rate)")
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    if grad_clip is not None:
                        torch.nn.utils.clip_grad_norm_(params, grad_clip)
                    optimizer.step()
                    scheduler.step()
                    result.steps += 1
                    loss_sum += float(loss.detach()) * len(batch)
                    correct += int((logits.detach().argmax(-1) == target).sum())
                    bar.update(1)
                    bar.set_postfix(epoch=epoch + 1, loss=f"{float(loss.detach()):.3f}")
                result.epoch_loss.append(loss_sum / len(items))
                result.epoch_accuracy.append(correct / len(items))
                emit(f"{name}: epoch {epoch + 1}/{epochs}  train loss {result.epoch_loss[-1]:.4f}  "
                     f"accuracy {result.epoch_accuracy[-1]:.3f}")
        finally:
            bar.close()
            for param in params:
                param.grad = None
        result.train_accuracy = accuracy(teacher, items, labels)
    result.seconds = time.perf_counter() - start
    emit(f"{name}: train accuracy {result.train_accuracy:.3f} ({len(items)} samples, {result.steps} steps, "
         f"{result.seconds:.1f} s)")
    return result


def save_finetuned(teacher: Teacher, path: str | Path) -> Path:
    """Write the teacher's model to `path` in its family's checkpoint format; `path` appears complete
    or not at all (an older `path` is replaced only once the new one is written)."""
    path = Path(path)
    with atomic_directory(path) as staging:
        teacher.save_pretrained(staging)
    return path


def _progress(total: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, disable=not enabled, leave=False, dynamic_ncols=True)
