"""Turn an open-ended answer into a multiple-choice question with seeded distractors.

MSRVTT-QA, MSVD-QA and ActivityNet-QA are open-ended; the student scores options, so each question
gets `num_choices` options: the correct answer plus distractors.

Rules:
- Distractors come from the TRAIN answers only (`AnswerPools` is built from the train split), so
  no val/test answer leaks into the options of another split.
- They come from the same answer type (`pool_key`: ActivityNet's type, MSRVTT/MSVD's question
  word). When that pool has too few other answers, the rest come from all train answers; when even
  that is short, the question simply has fewer options (at least 2).
- A yes/no answer (normalised text "yes" or "no") always gets exactly the two options yes and no,
  whatever `num_choices` is; yes/no answers never serve as distractors for open answers.
- Never a duplicate of the correct answer or of another distractor (compared after lower-casing
  and collapsing whitespace).
- Distractors are drawn in proportion to their train frequency (common answers are plausible;
  one-off typos rarely appear), without replacement. With `min_answer_freq` k > 1 (the seed
  repository's `--min_answer_freq`, 5 there), answers seen fewer than k times in train never serve as
  distractors (they can still be a question's correct answer); if no answer is that frequent, all are kept.
- Deterministic: each question has its own RNG seeded by (`seed`, sample id), so the options do
  not depend on file order or on which other questions are loaded. The correct answer's position
  is drawn from the same RNG.
"""
from __future__ import annotations

import random
from bisect import bisect_right
from collections import Counter, defaultdict
from dataclasses import dataclass
from itertools import accumulate
from typing import Iterable

from cater.data.schema import Sample

YES, NO = "yes", "no"
MAX_REJECTIONS_PER_DRAW = 50


def normalize_answer(text: str) -> str:
    return " ".join(text.split()).lower()


def is_yes_no(answer: str) -> bool:
    return normalize_answer(answer) in (YES, NO)


@dataclass
class AnswerPool:
    """Distinct answers of one type, most frequent first, with cumulative frequencies."""

    answers: list[str]  # display text (the most common spelling)
    keys: list[str]  # normalised text, parallel to answers
    cum_weights: list[int]

    @classmethod
    def from_counts(cls, spellings: dict[str, Counter]) -> "AnswerPool":
        totals = {key: sum(c.values()) for key, c in spellings.items()}
        order = sorted(totals, key=lambda key: (-totals[key], key))
        answers = [min(spellings[k].items(), key=lambda kv: (-kv[1], kv[0]))[0] for k in order]
        return cls(answers, order, list(accumulate(totals[k] for k in order)))

    def __len__(self) -> int:
        return len(self.keys)


class AnswerPools:
    """Train answers grouped by pool key, plus one pool of all open (non yes/no) answers."""

    def __init__(self, pairs: Iterable[tuple[str, str]], min_answer_freq: int = 1):
        by_key: dict[str, dict[str, Counter]] = defaultdict(lambda: defaultdict(Counter))
        overall: dict[str, Counter] = defaultdict(Counter)
        for answer, pool_key in pairs:
            text = answer.strip()
            key = normalize_answer(text)
            if not key or key in (YES, NO):
                continue
            by_key[pool_key][key][text] += 1
            overall[key][text] += 1
        frequent = {key for key, spellings in overall.items() if sum(spellings.values()) >= min_answer_freq}
        if not frequent:  # as the seed: a threshold no answer reaches keeps them all
            frequent = set(overall)
        self.dropped_rare = len(overall) - len(frequent)  # distinct answers too rare to be distractors
        keep = lambda counts: {key: c for key, c in counts.items() if key in frequent}  # noqa: E731
        self.by_key = {k: AnswerPool.from_counts(keep(v)) for k, v in by_key.items()}
        self.overall = AnswerPool.from_counts(keep(overall))

    def pool(self, pool_key: str) -> AnswerPool:
        return self.by_key.get(pool_key, AnswerPool([], [], []))


@dataclass
class ChoiceResult:
    choices: list[str]
    answer_idx: int
    topped_up: bool  # some distractors came from outside the answer's own pool
    short: bool  # fewer options than asked for (open answers only)


def make_choices(answer: str, pool_key: str, pools: AnswerPools, num_choices: int, seed: int, sample_id: str) -> ChoiceResult:
    """Options for one question: the correct answer at a seeded position among distractors."""
    if num_choices < 2:
        raise ValueError(f"num_choices must be at least 2, got {num_choices}")
    correct = answer.strip()
    rng = random.Random(f"{seed}/{sample_id}")
    if is_yes_no(correct):
        other = NO if normalize_answer(correct) == YES else YES
        return _place(correct, [other], rng, topped_up=False, short=False)
    wanted = num_choices - 1
    taken = {normalize_answer(correct)}
    distractors = _draw(rng, pools.pool(pool_key), wanted, taken)
    topped_up = len(distractors) < wanted
    if topped_up:
        distractors += _draw(rng, pools.overall, wanted - len(distractors), taken)
    if not distractors:
        raise ValueError(f"sample {sample_id}: no train answer other than {correct!r} to use as a distractor")
    return _place(correct, distractors, rng, topped_up=topped_up, short=len(distractors) < wanted)


def _place(correct: str, distractors: list[str], rng: random.Random, topped_up: bool, short: bool) -> ChoiceResult:
    position = rng.randrange(len(distractors) + 1)
    choices = distractors[:position] + [correct] + distractors[position:]
    return ChoiceResult(choices, position, topped_up, short)


def _draw(rng: random.Random, pool: AnswerPool, count: int, taken: set[str]) -> list[str]:
    """Up to `count` answers from `pool` not in `taken` (normalised texts), frequency-weighted,
    without replacement; `taken` is updated with what was drawn."""
    if len(pool) <= count + len(taken):  # a small pool: take its free answers in random order
        free = [i for i in range(len(pool)) if pool.keys[i] not in taken]
        rng.shuffle(free)
        picked = free[:count]
    else:
        picked = _weighted_sample(rng, pool, count, taken)
    taken.update(pool.keys[i] for i in picked)
    return [pool.answers[i] for i in picked]


def _weighted_sample(rng: random.Random, pool: AnswerPool, count: int, taken: set[str]) -> list[int]:
    """Rejection sampling on the cumulative frequencies; uniform over the rest if that stalls."""
    picked: list[int] = []
    seen = set(taken)
    total = pool.cum_weights[-1]
    rejections = 0
    while len(picked) < count and rejections < MAX_REJECTIONS_PER_DRAW * count:
        i = bisect_right(pool.cum_weights, rng.randrange(total))
        if pool.keys[i] in seen:
            rejections += 1
            continue
        picked.append(i)
        seen.add(pool.keys[i])
    if len(picked) < count:  # the weight sits on answers already taken
        rest = [i for i in range(len(pool)) if pool.keys[i] not in seen]
        picked += rng.sample(rest, min(count - len(picked), len(rest)))
    return picked


@dataclass
class OpenQA:
    """One open-ended question as read from an official file, before options are added."""

    id: str
    dataset: str
    split: str
    video: str
    video_id: str
    question: str
    answer: str
    question_type: str
    pool_key: str  # the answer type whose train answers serve as distractors


def to_samples(questions: Iterable[OpenQA], pools: AnswerPools, num_choices: int, seed: int) -> tuple[list[Sample], dict]:
    """Multiple-choice samples plus counts: yes/no questions, topped-up and short option lists."""
    samples: list[Sample] = []
    stats = Counter()
    for q in questions:
        result = make_choices(q.answer, q.pool_key, pools, num_choices, seed, q.id)
        stats["yes_no"] += is_yes_no(q.answer)
        stats["topped_up"] += result.topped_up
        stats["short"] += result.short
        samples.append(
            Sample(
                id=q.id,
                dataset=q.dataset,
                split=q.split,
                video=q.video,
                video_id=q.video_id,
                question=q.question,
                choices=result.choices,
                answer_idx=result.answer_idx,
                question_type=q.question_type,
            )
        )
    return samples, {"yes_no_questions": stats["yes_no"], "topped_up": stats["topped_up"], "short": stats["short"]}


__all__ = [
    "AnswerPool",
    "AnswerPools",
    "ChoiceResult",
    "OpenQA",
    "is_yes_no",
    "make_choices",
    "normalize_answer",
    "to_samples",
]
