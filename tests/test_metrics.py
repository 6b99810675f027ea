"""cater.metrics: bootstrap CIs (question and video-cluster resampling) and the trivial baselines."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from cater.metrics import Baselines, bootstrap_ci, split_metrics


def test_bootstrap_is_deterministic_for_a_seed_and_brackets_the_accuracy():
    rng = np.random.default_rng(0)
    correct = rng.random(300) < 0.4
    videos = np.repeat(np.arange(100), 3)
    for clusters in (None, videos):
        first = bootstrap_ci(correct, clusters, seed=3)
        assert first == bootstrap_ci(correct, clusters, seed=3)
        assert first == pytest.approx(bootstrap_ci(correct, clusters, seed=4), abs=0.01)  # another seed: close
        lo, hi = first
        assert lo < correct.mean() < hi and 0.0 <= lo and hi <= 1.0
    assert bootstrap_ci(np.ones(10, bool)) == (1.0, 1.0)
    # the normal-approximation width for n=300, p=0.4 is 2 * 1.96 * sqrt(p(1-p)/n) = 0.111
    lo, hi = bootstrap_ci(correct)
    assert hi - lo == pytest.approx(2 * 1.96 * math.sqrt(0.4 * 0.6 / 300), abs=0.015)
    with pytest.raises(ValueError):
        bootstrap_ci(np.array([], bool))
    with pytest.raises(ValueError):
        bootstrap_ci(correct, videos[:10])


def test_resampling_clusters_equals_resampling_their_questions_when_every_cluster_is_one_question():
    rng = np.random.default_rng(1)
    correct = rng.random(500) < 0.3
    lo, hi = bootstrap_ci(correct, np.arange(500), n_boot=4000)
    lo2, hi2 = bootstrap_ci(correct, None, n_boot=4000)
    assert lo == pytest.approx(lo2, abs=0.01) and hi == pytest.approx(hi2, abs=0.01)


def _correlated(rng, videos=60, per_video=5, p=0.4, share=0.9):
    """Questions about one video are mostly right or wrong together; the true accuracy is p."""
    video_correct = rng.random(videos) < p
    own = rng.random((videos, per_video)) < p
    same = rng.random((videos, per_video)) < share
    correct = np.where(same, video_correct[:, None], own).ravel()
    return correct, np.repeat(np.arange(videos), per_video)


def test_coverage_is_near_the_nominal_level():
    rng = np.random.default_rng(2)
    hits = 0
    trials = 400
    for trial in range(trials):
        correct = rng.random(200) < 0.3
        lo, hi = bootstrap_ci(correct, n_boot=1000, seed=trial)
        hits += lo <= 0.3 <= hi
    assert 0.91 <= hits / trials <= 0.99


def test_cluster_bootstrap_is_wider_and_covers_on_correlated_data():
    rng = np.random.default_rng(3)
    widths, covered = {"question": [], "video": []}, {"question": 0, "video": 0}
    trials = 300
    for trial in range(trials):
        correct, videos = _correlated(rng)
        for kind, clusters in (("question", None), ("video", videos)):
            lo, hi = bootstrap_ci(correct, clusters, n_boot=1000, seed=trial)
            widths[kind].append(hi - lo)
            covered[kind] += lo <= 0.4 <= hi
    assert np.mean(widths["video"]) > 1.7 * np.mean(widths["question"])
    assert covered["video"] / trials >= 0.9  # near 95%: the clusters are the independent units
    assert covered["question"] / trials < 0.8  # resampling questions pretends 300 independent ones


def test_bootstrap_stays_fast_for_250k_questions():
    import time

    rng = np.random.default_rng(4)
    correct = rng.random(250_000) < 0.4
    videos = np.array([f"v{i}" for i in rng.integers(0, 40_000, size=correct.size)], dtype=object)
    start = time.perf_counter()
    lo, hi = bootstrap_ci(correct, videos)
    assert time.perf_counter() - start < 10 and lo < correct.mean() < hi


# ---------------------------------------------------------------- baselines on a hand-made example

TRAIN_CHOICES = [["red", "blue", "green"], ["blue", "red", "green"], ["green", "blue", "red"],
                 ["one", "two", "three"], ["two", "one", "three"], ["three", "one", "two"]]
TRAIN_LABELS = [0, 1, 2, 1, 0, 2]  # color: red, red, red; count: two, two, two
TRAIN_TYPES = ["color", "color", "color", "count", "count", "count"]


def test_baselines_fit_on_train_and_predict_by_letter_and_by_answer_text():
    fitted = Baselines.fit(TRAIN_LABELS + [None], TRAIN_CHOICES + [["x", "y"]], TRAIN_TYPES + ["color"])
    # positions 0, 1 and 2 are each right twice: the tie goes to the smallest, 0
    assert fitted.letter == 0
    assert fitted.answer_by_type == {"color": "red", "count": "two"}
    assert fitted.letter_by_type == {"color": 0, "count": 0}
    choices = [["blue", " Red ", "green"], ["green", "blue"], ["three", "one", "two"], ["a", "b"]]
    types = ["color", "color", "count", "shape"]
    predicted = fitted.predict(choices, types)
    assert predicted["majority_letter"].tolist() == [0, 0, 0, 0]
    # " Red " matches red (whitespace and case); no red -> color's majority position; unseen type -> majority letter
    assert predicted["majority_answer_per_type"].tolist() == [1, 0, 2, 0]
    with pytest.raises(ValueError, match="no labelled"):
        Baselines.fit([None, -100], [["a"], ["b"]], ["t", "t"])


def test_split_metrics_on_a_hand_made_split():
    choices = [["blue", "red", "green"], ["red", "green", "blue"], ["green", "blue", "red"],
               ["one", "two", "three"], ["two", "one", "three"], ["three", "one"]]
    labels = [1, 0, 2, 1, 0, 0]
    types = ["color", "color", "color", "count", "count", "count"]
    videos = ["v1", "v1", "v2", "v3", "v3", "v4"]
    predictions = [1, 1, 2, 1, 0, 1]  # right, wrong, right, right, right, wrong
    m = split_metrics(predictions, labels, choices, types, videos, TRAIN_LABELS, TRAIN_CHOICES, TRAIN_TYPES)
    assert m["accuracy"] == round(4 / 6, 4) and m["n"] == 6
    assert m["chance"] == round((5 / 3 + 1 / 2) / 6, 4)
    lo, hi = m["ci95_low"], m["ci95_high"]
    assert 0.0 <= lo <= m["accuracy"] <= hi <= 1.0
    # majority letter (0) is right on questions 2 and 5 and 6; majority answer per type picks red / two:
    # positions 1, 0, 2, 1, 0 and (no "two") count's majority position 0 -> all six right
    assert m["baselines"]["majority_letter"]["accuracy"] == 0.5
    assert m["baselines"]["majority_answer_per_type"] == {"accuracy": 1.0, "ci95_low": 1.0, "ci95_high": 1.0}
    assert list(m["per_type"]) == ["color", "count"]
    color = m["per_type"]["color"]
    assert color["n"] == 3 and color["accuracy"] == round(2 / 3, 4)
    assert color["majority_letter"]["accuracy"] == round(1 / 3, 4)
    assert color["majority_answer_per_type"]["accuracy"] == 1.0
    assert m["per_type"]["count"]["majority_letter"]["accuracy"] == round(2 / 3, 4)
    json.dumps(m)  # plain JSON: no numpy scalars


def test_unlabelled_split_has_no_accuracy_and_no_ci():
    choices = [["a", "b"], ["c", "d"], ["e", "f"]]
    m = split_metrics([0, 1, 0], [None, None, -100], choices, ["when", "when", "other"], ["v1", "v1", "v2"],
                      TRAIN_LABELS, TRAIN_CHOICES, TRAIN_TYPES)
    assert m["accuracy"] is None and m["ci95_low"] is None and m["ci95_high"] is None and m["n"] == 0 and m["chance"] is None
    assert m["baselines"] == {"majority_letter": {"accuracy": None, "ci95_low": None, "ci95_high": None},
                              "majority_answer_per_type": {"accuracy": None, "ci95_low": None, "ci95_high": None}}
    assert m["per_type"]["when"] == {"accuracy": None, "ci95_low": None, "ci95_high": None, "n": 0,
                                     "majority_letter": {"accuracy": None, "ci95_low": None, "ci95_high": None},
                                     "majority_answer_per_type": {"accuracy": None, "ci95_low": None, "ci95_high": None}}
    json.dumps(m)


def test_format_metrics_prints_cis_and_baselines_and_reads_old_files():
    from cater.stages.evaluate import format_metrics

    train = (TRAIN_LABELS, TRAIN_CHOICES, TRAIN_TYPES)
    test = split_metrics([1, 1, 2], [1, 0, 2], TRAIN_CHOICES[:3], ["color"] * 3, ["v1", "v1", "v2"], *train)
    text = format_metrics({"best_epoch": 1, "test": test})
    lines = text.splitlines()
    ml, ma = test["baselines"]["majority_letter"], test["baselines"]["majority_answer_per_type"]
    assert lines[0] == (f"test accuracy 0.667 [{test['ci95_low']:.3f}, {test['ci95_high']:.3f}] on 3 questions (chance 0.333; "
                        f"majority letter {ml['accuracy']:.3f} [{ml['ci95_low']:.3f}, {ml['ci95_high']:.3f}]; "
                        f"majority answer per type {ma['accuracy']:.3f} [{ma['ci95_low']:.3f}, {ma['ci95_high']:.3f}])")
    assert lines[1].startswith("  color        0.667 [") and "(n=3; majority letter 0.333 [" in lines[1]
    assert "95% bootstrap CI over videos" in lines[-1]
    # TVQA test_public: no labels on test, the validation split is shown too
    unlabelled = split_metrics([0], [None], [["a", "b"]], ["when"], ["v"], *train)
    text = format_metrics({"test": unlabelled, "val": test})
    assert "test accuracy n/a on 0 questions" in text and "val accuracy 0.667 [" in text
    # an eval.json from before CIs still prints
    old = {"test": {"accuracy": 0.3553, "chance": 0.2, "n": 152, "per_type": {"after": {"accuracy": 0.3421, "n": 38}}}}
    assert format_metrics(old).splitlines() == ["test accuracy 0.355 on 152 questions (chance 0.200)",
                                                "  after        0.342  (n=38)"]


def test_ci_is_stored_as_numbers_dvc_can_read():
    """DVC's metrics reader keeps only numbers: a list-valued CI would vanish from `dvc exp show`."""
    from cater.metrics import accuracy_with_ci, ci_of

    block = accuracy_with_ci(np.array([True, False, True, True]), np.array(["a", "a", "b", "c"]))
    assert all(isinstance(v, float) for v in block.values())
    assert ci_of(block) == (block["ci95_low"], block["ci95_high"])
    assert ci_of({"accuracy": 0.5, "ci95": [0.4, 0.6]}) == (0.4, 0.6)  # files written before the change
    assert ci_of({"accuracy": 0.5}) is None
