"""Training and evaluation of the student on cached (or recomputed) backbone features.

By job: `config` (TrainConfig, params.yaml's `train:` section), `data` (teacher outputs, the index tensors of a
split, batching, the labelled subset, the shuffled-prompt derangement), `loop` (seeding, the schedule, parameter
groups, StudentWithLoss, train, predict, accuracy) and `checkpoint` (the safetensors file, save and load).

The loop runs unchanged on one CPU, one GPU or several processes under `accelerate launch` /
`torchrun` (DDP); `accelerate` picks the device and precision. Logging goes through a callback,
so this package knows nothing about DVC.
"""
from cater.train.checkpoint import (CHECKPOINT_FIELDS, CHECKPOINT_FORMAT, CHECKPOINT_METADATA_KEY, OPTIONAL_CHECKPOINT_FIELDS,
                                    RUNTIME_FIELDS, checkpoint_bytes, features_identity, load_student, save_student)
from cater.train.config import TrainConfig
from cater.train.data import (BatchCollate, FeatureBatcher, SplitTensors, TeacherHidden, TeacherOutputs, derangement,
                              labelled_subset, load_teacher_outputs)
from cater.train.loop import (NO_DECAY_NAME_FRAGMENTS, SEED_TEACHER_NAMES, StudentWithLoss, accuracy, build_student, lr_factor,
                              parameter_groups, predict, seed_everything, seed_teacher_name, train)

__all__ = [
    "BatchCollate",
    "CHECKPOINT_FIELDS",
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_METADATA_KEY",
    "FeatureBatcher",
    "NO_DECAY_NAME_FRAGMENTS",
    "OPTIONAL_CHECKPOINT_FIELDS",
    "RUNTIME_FIELDS",
    "SEED_TEACHER_NAMES",
    "SplitTensors",
    "StudentWithLoss",
    "TeacherHidden",
    "TeacherOutputs",
    "TrainConfig",
    "accuracy",
    "build_student",
    "checkpoint_bytes",
    "derangement",
    "features_identity",
    "labelled_subset",
    "load_student",
    "load_teacher_outputs",
    "lr_factor",
    "parameter_groups",
    "predict",
    "save_student",
    "seed_everything",
    "seed_teacher_name",
    "train",
]
