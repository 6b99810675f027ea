"""Stage `eval`: the student on the val and test splits -> metrics/eval.json and plots/ (per type, confusion).

`cater eval --checkpoint PATH --split-file PATH [--out PATH] [--predictions PATH]` evaluates any student checkpoint (an experiment's,
a colleague's) on any split file in the samples schema instead, with the checkpoint's own train config (prompt
variant, generator, choice text); it prints the same block and writes only `--out`, never the stage's outputs. The
split's questions must be in the feature store (the student reads cached features).

Every accuracy comes with a 95% bootstrap CI that resamples videos (questions about one video are
correlated) and sits beside the trivial baselines fit on the train split (`cater.metrics`):
`majority_letter` and `majority_answer_per_type`, each with its own CI, overall and per type.
"""
from __future__ import annotations

import csv
import sys
from pathlib import Path

from cater.data.schema import read_samples
from cater.io import atomic_path, atomic_write_json
from cater.metrics import ci_of, split_metrics
from cater.stages.train import CHECKPOINT, prepare
from cater.teachers.base import LETTERS
from cater.train import load_student, predict

METRICS = Path("metrics/eval.json")
SPLITS_DIR = Path("data/splits")
PLOTS = Path("plots")
EVAL_SPLITS = ("val", "test")
BASELINE_TITLES = {"majority_letter": "majority letter", "majority_answer_per_type": "majority answer per type"}


def _write_csv(path: Path, header: list[str], rows: list[list]) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(header)
            writer.writerows(rows)


def predictions_record(samples, chosen) -> dict:
    """{sample id: chosen option index}; TVQA's own ids (`tvqa-<qid>`) become the official server's keys, the qid
    as a string (its submission file is one JSON object qid -> answer index)."""
    if samples and all(s.dataset == "tvqa" and s.id.startswith("tvqa-") for s in samples):
        return {s.id[len("tvqa-"):]: int(c) for s, c in zip(samples, chosen)}
    return {s.id: int(c) for s, c in zip(samples, chosen)}


def evaluate_file(checkpoint_path: Path, split_file: Path, out: Path | None, predictions: Path | None = None) -> dict:
    """One checkpoint on one split file, with the checkpoint's own train config; metrics as the stage computes them."""
    from cater.features import CachedFeatures
    from cater.stages.train import FEATURES
    from cater.train import FeatureBatcher, SplitTensors, TrainConfig, derangement

    from cater.train import features_identity

    student, checkpoint = load_student(checkpoint_path)
    cfg = TrainConfig(**checkpoint["train_config"])
    features = CachedFeatures(FEATURES)
    trained_on, here = checkpoint.get("features"), features_identity(features)
    if trained_on is not None and trained_on != here:
        raise ValueError(f"{checkpoint_path}: trained on other features ({trained_on}) than {FEATURES} holds ({here}); "
                         "evaluate it on the feature store it was trained with (dvc checkout / dvc exp apply)")
    samples = read_samples(split_file)
    if not samples:
        raise ValueError(f"{split_file}: no questions")
    missing = [s.id for s in samples if s.id not in features.index["samples"] or s.video_id not in features.video_row]
    if missing:
        raise ValueError(f"{split_file}: {len(missing)} of {len(samples)} questions are not in {FEATURES} (first: {missing[0]}); "
                         "the student reads cached features, so the questions must come from the pipeline's dataset "
                         "(add them to the dataset and run dvc repro features)")
    random_map = derangement(sorted({s.video_id for s in samples}), cfg.seed) if cfg.prompt_variant == "random" else None
    split = SplitTensors(samples, features, cfg, None, random_map)
    logits = predict(student, FeatureBatcher(features), split, batch_size=cfg.batch_size)
    train = read_samples(SPLITS_DIR / "train.jsonl")  # the baselines are fit on the train split, as in the stage
    block = split_metrics(logits.argmax(1).numpy(), split.labels.numpy(), [s.choices for s in samples], split.question_types,
                          split.video_ids, [s.answer_idx for s in train], [s.choices for s in train],
                          [s.question_type for s in train])
    result = {"checkpoint": str(checkpoint_path), "split_file": str(split_file), "best_epoch": checkpoint["best_epoch"],
              "metrics": block}
    if out is not None:
        atomic_write_json(out, result)
    if predictions is not None:
        atomic_write_json(predictions, predictions_record(samples, logits.argmax(1).tolist()))
        print(f"wrote {predictions}: the chosen option of each of the {len(samples)} questions")
    print(f"{checkpoint_path} on {split_file}:")
    print("\n".join(format_split(split_file.stem, block)))
    return result


def run(params, args) -> None:
    if args.checkpoint or args.split_file or args.predictions:
        evaluate_file(Path(args.checkpoint or CHECKPOINT), Path(args.split_file or SPLITS_DIR / "test.jsonl"),
                      Path(args.out) if args.out else None, Path(args.predictions) if args.predictions else None)
        return
    if args.out:
        raise ValueError("--out is for --checkpoint / --split-file evaluations; the stage writes metrics/eval.json")
    cfg, features, tensors, batcher = prepare(params)
    student, checkpoint = load_student(CHECKPOINT)
    samples = {name: read_samples(SPLITS_DIR / f"{name}.jsonl") for name in ("train", *EVAL_SPLITS)}
    train = samples["train"]
    metrics = {"best_epoch": checkpoint["best_epoch"]}
    for name in EVAL_SPLITS:
        split = tensors[name]
        if split.ids != [s.id for s in samples[name]]:
            raise RuntimeError(f"eval: {SPLITS_DIR / name}.jsonl and the {name} tensors list different questions")
        logits = predict(student, batcher, split, batch_size=cfg.batch_size)
        metrics[name] = split_metrics(
            logits.argmax(1).numpy(), split.labels.numpy(), [s.choices for s in samples[name]],
            split.question_types, split.video_ids,
            [s.answer_idx for s in train], [s.choices for s in train], [s.question_type for s in train])
        if name == "test":
            test_logits, test_split = logits, split
    PLOTS.mkdir(exist_ok=True)
    _write_csv(PLOTS / "per_type_accuracy.csv", ["question_type", "accuracy", "ci95_low", "ci95_high", "n"],
               [[t, v["accuracy"], *(ci_of(v) or (None, None)), v["n"]] for t, v in metrics["test"]["per_type"].items()])
    chosen = test_logits.argmax(1)
    _write_csv(PLOTS / "confusion.csv", ["actual", "predicted"],
               [[LETTERS[int(y)], LETTERS[int(p)]] for y, p in zip(test_split.labels, chosen) if y >= 0])
    atomic_write_json(METRICS, metrics)  # last, so a failure above leaves no metrics that look valid
    print(format_metrics(metrics))


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def format_accuracy(block: dict | None) -> str:
    """`0.412 [0.371, 0.455]`; `n/a` without labels; no brackets for metrics written before CIs."""
    block = block or {}
    ci = ci_of(block)
    return _fmt(block.get("accuracy")) + (f" [{_fmt(ci[0])}, {_fmt(ci[1])}]" if ci else "")


def _baselines(block: dict) -> str:
    baselines = block.get("baselines", block)  # per type, the baselines sit beside the accuracy
    return "; ".join(f"{title} {format_accuracy(baselines.get(key))}" for key, title in BASELINE_TITLES.items()
                     if key in baselines)


def format_split(name: str, block: dict) -> list[str]:
    extras = "; ".join(part for part in (f"chance {_fmt(block.get('chance'))}", _baselines(block)) if part)
    lines = [f"{name} accuracy {format_accuracy(block)} on {block['n']} questions ({extras})"]
    for qtype, v in block.get("per_type", {}).items():
        baselines = _baselines(v)
        lines.append(f"  {qtype:<12} {format_accuracy(v)}  (n={v['n']}{'; ' + baselines if baselines else ''})")
    return lines


def format_metrics(metrics: dict) -> str:
    """The test split's accuracy with its 95% CI beside chance and the baselines, overall and per type
    (the val split's too when the test split has no labels). 95% CIs resample videos."""
    test = metrics["test"]
    lines = format_split("test", test)
    if test.get("accuracy") is None and "val" in metrics:
        lines.append("the test split has no labels; on the validation split:")
        lines += format_split("val", metrics["val"])
    if ci_of(test) or ci_of(metrics.get("val")):
        lines.append("[lo, hi]: 95% bootstrap CI over videos; baselines fit on the train split")
    return "\n".join(lines)


def main(argv=None) -> int:
    from cater.stages.common import stage_main

    def arguments(parser):
        parser.add_argument("--checkpoint", help="a student checkpoint to evaluate (default: the stage's)")
        parser.add_argument("--split-file", help="a split file in the samples schema (default: data/splits/test.jsonl)")
        parser.add_argument("--out", help="write the metrics of a --checkpoint / --split-file evaluation here (JSON)")
        parser.add_argument("--predictions", help="write each question's chosen option here (JSON; for TVQA, the official "
                                                  "submission format: qid -> answer index)")

    return stage_main(__doc__, run, arguments, argv=argv, sections=('train', 'teacher', 'prompts'))


if __name__ == "__main__":
    sys.exit(main())
