"""cater: distil video LLM teachers into a small CaTeR student for multiple-choice video QA.

The public API, importable from `cater` directly and loaded on first use (so `import cater`, and every
`cater <stage>` command, imports no torch until a name needs it):

    from cater import load_params, read_samples, FrameStore, CachedFeatures
    from cater import CaTeRStudent, StudentConfig, DistillConfig, DistillationLoss, TrainConfig, load_student

(Training itself is `cater.train.train`: `cater.train` is the training package.)
    from cater import Teacher, TeacherConfig, TeacherInput, TeacherOutput, build_teacher, make_backend

The pipeline's stages are `cater <stage>` (src/cater/stages/); the experiment tools are in cater.experiments.
"""
from __future__ import annotations

import importlib

# public name -> the module that defines it (or the package that re-exports it)
_API = {
    # params.yaml
    "ConfigError": "cater.params_schema",
    "load_params": "cater.config",
    # data
    "Sample": "cater.data.schema",
    "SchemaError": "cater.data.schema",
    "read_samples": "cater.data.schema",
    "write_samples": "cater.data.schema",
    "FrameStore": "cater.data.frames",
    "decode_video": "cater.data.frames",
    # features and models
    "CachedFeatures": "cater.features",
    "BackboneSpec": "cater.models.backbone",
    "load_backbone": "cater.models.backbone",
    "CaTeRStudent": "cater.models.student",
    "StudentConfig": "cater.sections",
    # distillation and training
    "DistillConfig": "cater.sections",
    "DistillationLoss": "cater.distill",
    "TrainConfig": "cater.sections",
    "ShapesConfig": "cater.sections",
    "predict": "cater.train",
    "save_student": "cater.train",
    "load_student": "cater.train",
    "bootstrap_ci": "cater.metrics",
    "split_metrics": "cater.metrics",
    # teachers and prompt generators
    "Teacher": "cater.teachers.base",
    "TeacherConfig": "cater.teachers.base",
    "TeacherError": "cater.teachers.base",
    "TeacherInput": "cater.teachers.base",
    "TeacherOutput": "cater.teachers.base",
    "build_teacher": "cater.teachers.registry",
    "make_backend": "cater.prompts.registry",
}

__all__ = sorted(_API)


def __getattr__(name: str):
    module = _API.get(name)
    if module is None:
        raise AttributeError(f"module 'cater' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # the next lookup does not come here
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
