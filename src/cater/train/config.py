"""The training configuration: params.yaml's `train:` section, typed in `cater.sections` with the other sections."""
from __future__ import annotations

from cater.sections import TrainConfig

__all__ = ["TrainConfig"]
