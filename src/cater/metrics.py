"""Accuracy with a bootstrap confidence interval, beside the trivial baselines it must beat.

Library code: arrays and lists in, plain dicts with rounded floats out; no files, no DVC.

- `bootstrap_ci`: percentile bootstrap of an accuracy; with cluster ids (the video of each
  question: questions about one video are correlated) it resamples whole clusters.
- `Baselines`: `majority_letter` and `majority_answer_per_type`, fit on the train split.
- `split_metrics`: the whole metrics block of one split (model, chance, baselines, per type).
"""
from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Sequence

import numpy as np

N_BOOT = 2000
LEVEL = 0.95
SEED = 0
DIGITS = 4
BASELINE_NAMES = ("majority_letter", "majority_answer_per_type")
_MAX_CELLS = 4_000_000  # replicate x pattern cells drawn at once: bounds the bootstrap's memory (~32 MB)


def bootstrap_ci(correct: np.ndarray, clusters: np.ndarray | None = None, n_boot: int = N_BOOT, seed: int = SEED,
                 level: float = LEVEL) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of `correct` (one bool per question).

    Without `clusters`, questions are resampled with replacement. With `clusters` (one id per
    question), whole clusters are resampled with replacement, K draws for K clusters, and the
    replicate's accuracy is its correct count over its question count.

    Exact and vectorised: clusters with the same (correct, size) pair are interchangeable, so K
    uniform draws over clusters are one multinomial draw over the distinct pairs (a handful in
    practice, at most a few thousand for 250k questions). Without clusters that reduces to a
    binomial count. Deterministic for a seed; memory is bounded by drawing replicates in chunks.
    """
    correct = np.asarray(correct, dtype=bool).ravel()
    if correct.size == 0:
        raise ValueError("bootstrap_ci: no questions")
    if not 0.0 < level < 1.0:
        raise ValueError(f"bootstrap_ci: level must be in (0, 1), got {level}")
    if n_boot < 1:
        raise ValueError(f"bootstrap_ci: n_boot must be positive, got {n_boot}")
    rng = np.random.default_rng(seed)
    if clusters is None:
        replicates = rng.binomial(correct.size, correct.mean(), size=n_boot) / correct.size
    else:
        clusters = np.asarray(clusters).ravel()
        if clusters.shape != correct.shape:
            raise ValueError(f"bootstrap_ci: {clusters.size} cluster ids for {correct.size} questions")
        _, codes = np.unique(clusters, return_inverse=True)
        sums = np.bincount(codes, weights=correct).round().astype(np.int64)
        sizes = np.bincount(codes).astype(np.int64)
        patterns, counts = np.unique(np.stack([sums, sizes], axis=1), axis=0, return_counts=True)
        k = int(sizes.size)
        pvals = counts / k
        replicates = np.empty(n_boot)
        step = max(1, _MAX_CELLS // len(patterns))
        for start in range(0, n_boot, step):
            draws = rng.multinomial(k, pvals, size=min(step, n_boot - start))  # (replicates, patterns)
            replicates[start:start + len(draws)] = (draws @ patterns[:, 0]) / (draws @ patterns[:, 1])
    tail = (1.0 - level) / 2.0
    lo, hi = np.quantile(replicates, [tail, 1.0 - tail])
    return float(lo), float(hi)


# ---------------------------------------------------------------- trivial baselines

def _normalise(text: str) -> str:
    return " ".join(str(text).split()).casefold()


def _most_common(counter: Counter):
    """The most frequent key; ties go to the smallest key, so the result never depends on order."""
    return min(counter, key=lambda key: (-counter[key], key))


def _labels(labels: Sequence) -> np.ndarray:
    """Labels as ints, -1 where unlabelled (None or negative, e.g. -100 from the training tensors)."""
    return np.array([-1 if y is None or int(y) < 0 else int(y) for y in labels], dtype=np.int64)


@dataclass(frozen=True)
class Baselines:
    """The trivial baselines, fit on the train split.

    majority_letter: the most frequent correct option position in train, predicted for every
    question (a position past a question's last option is simply wrong).
    majority_answer_per_type: for each question type, the most frequent correct answer text in
    train (compared after collapsing whitespace and case). On an eval question it predicts the
    first choice whose text equals that answer; when no choice does (or the type never occurs in
    train), it falls back to the type's majority position in train, else to the majority letter.
    Ties are broken towards the smallest position and the alphabetically first text.
    """

    letter: int
    letter_by_type: dict[str, int]
    answer_by_type: dict[str, str]

    @classmethod
    def fit(cls, labels: Sequence, choices: Sequence[Sequence[str]], question_types: Sequence[str]) -> "Baselines":
        labels = _labels(labels)
        if not len(labels) == len(choices) == len(question_types):
            raise ValueError("Baselines.fit: labels, choices and question_types differ in length")
        letters, letters_by_type, answers_by_type = Counter(), defaultdict(Counter), defaultdict(Counter)
        for label, options, qtype in zip(labels, choices, question_types):
            if label < 0:
                continue
            if label >= len(options):
                raise ValueError(f"Baselines.fit: answer index {label} but only {len(options)} choices")
            letters[int(label)] += 1
            letters_by_type[qtype][int(label)] += 1
            answers_by_type[qtype][_normalise(options[label])] += 1
        if not letters:
            raise ValueError("Baselines.fit: the train split has no labelled questions")
        return cls(_most_common(letters), {t: _most_common(c) for t, c in letters_by_type.items()},
                   {t: _most_common(c) for t, c in answers_by_type.items()})

    def majority_letter(self, choices: Sequence[Sequence[str]]) -> np.ndarray:
        return np.full(len(choices), self.letter, dtype=np.int64)

    def majority_answer_per_type(self, choices: Sequence[Sequence[str]], question_types: Sequence[str]) -> np.ndarray:
        out = np.empty(len(choices), dtype=np.int64)
        for i, (options, qtype) in enumerate(zip(choices, question_types)):
            answer = self.answer_by_type.get(qtype)
            texts = [_normalise(o) for o in options]
            out[i] = texts.index(answer) if answer in texts else self.letter_by_type.get(qtype, self.letter)
        return out

    def predict(self, choices: Sequence[Sequence[str]], question_types: Sequence[str]) -> dict[str, np.ndarray]:
        return {"majority_letter": self.majority_letter(choices),
                "majority_answer_per_type": self.majority_answer_per_type(choices, question_types)}


# ---------------------------------------------------------------- the metrics block

def _round(value: float | None, digits: int) -> float | None:
    return None if value is None else round(float(value), digits)


def accuracy_with_ci(correct: np.ndarray, clusters: np.ndarray | None, n_boot: int = N_BOOT, seed: int = SEED,
                     digits: int = DIGITS) -> dict:
    """{accuracy, ci95_low, ci95_high} of the given questions; all None when there are none."""
    correct = np.asarray(correct, dtype=bool)
    if correct.size == 0:
        return {"accuracy": None, "ci95_low": None, "ci95_high": None}
    lo, hi = bootstrap_ci(correct, clusters, n_boot=n_boot, seed=seed, level=0.95)
    return {"accuracy": _round(correct.mean(), digits), "ci95_low": _round(lo, digits), "ci95_high": _round(hi, digits)}


def ci_of(block: dict | None) -> tuple[float, float] | None:
    """(low, high) of a metrics block: the scalar `ci95_low`/`ci95_high` (DVC's metrics reader keeps only
    numbers, so a list would vanish from `dvc exp show`), or an older file's `ci95: [low, high]`."""
    block = block or {}
    low, high = block.get("ci95_low"), block.get("ci95_high")
    if low is None or high is None:
        pair = block.get("ci95")
        if not isinstance(pair, (list, tuple)) or len(pair) != 2 or None in pair:
            return None
        low, high = pair
    return float(low), float(high)


def split_metrics(predictions: Sequence[int], labels: Sequence, choices: Sequence[Sequence[str]],
                  question_types: Sequence[str], video_ids: Sequence[str],
                  train_labels: Sequence, train_choices: Sequence[Sequence[str]], train_question_types: Sequence[str],
                  n_boot: int = N_BOOT, seed: int = SEED, digits: int = DIGITS) -> dict:
    """The metrics of one split. Unlabelled questions (None or negative labels) are not counted;
    a split without labels gets accuracy, CIs and chance None. CIs resample videos (`video_ids`).

    {accuracy, ci95_low, ci95_high, n, chance (mean 1/C),
     baselines: {majority_letter: {accuracy, ci95_low, ci95_high}, majority_answer_per_type: {...}},
     per_type: {type: {accuracy, ci95_low, ci95_high, n, majority_letter: {...}, majority_answer_per_type: {...}}}}
    """
    labels = _labels(labels)
    predictions = np.asarray(predictions, dtype=np.int64).ravel()
    types = np.asarray(list(question_types), dtype=object)
    videos = np.asarray(list(video_ids), dtype=object)
    if not len(predictions) == len(labels) == len(choices) == len(types) == len(videos):
        raise ValueError("split_metrics: predictions, labels, choices, question_types and video_ids differ in length")
    baselines = Baselines.fit(train_labels, train_choices, train_question_types).predict(choices, list(types))
    labelled = labels >= 0
    hits = {"model": predictions == labels, **{name: pred == labels for name, pred in baselines.items()}}

    def block(mask: np.ndarray) -> dict:
        mask = mask & labelled
        result = {name: accuracy_with_ci(hit[mask], videos[mask], n_boot, seed, digits) for name, hit in hits.items()}
        return {**result.pop("model"), "n": int(mask.sum()), **result}

    overall = block(np.ones(len(labels), dtype=bool))
    sizes = np.array([len(c) for c in choices], dtype=float)
    overall["chance"] = _round((1.0 / sizes[labelled]).mean(), digits) if labelled.any() else None
    overall["baselines"] = {name: overall.pop(name) for name in BASELINE_NAMES}
    overall["per_type"] = {str(t): block(types == t) for t in sorted(set(types))}
    return overall
