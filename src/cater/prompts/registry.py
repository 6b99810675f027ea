"""Prompt generators by backend name. A generator is a named entry of params `prompts.generators`."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from cater.prompts.base import PromptBackend


def make_backend(generator: str, cfg: dict[str, Any], cache_dir: Path) -> PromptBackend:
    """Build the backend for one generator entry; `cache_dir` holds its response cache, if any."""
    options = dict(cfg)
    backend = options.pop("backend", None)
    if backend == "annotations":
        from cater.prompts.annotations import AnnotationsBackend

        return AnnotationsBackend(**options)
    raise ValueError(f"params.yaml: prompts.generators.{generator}.backend {backend!r} is unknown (known: annotations)")
