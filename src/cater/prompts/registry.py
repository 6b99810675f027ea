"""Prompt generators by backend name. A generator is a named entry of params `prompts.generators`."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from cater.prompts.base import PromptBackend

BACKENDS = ("annotations", "openai", "hf", "given")
BACKEND_MODULES = {"annotations": "annotations", "openai": "openai_backend", "hf": "hf_backend", "given": "given"}  # cater.prompts.*

# Settings that change how requests are sent, never what comes back: they do not enter the
# config hash of the finished rows, so changing them does not redo (or re-ask) anything.
RUNTIME_KEYS = {
    "openai": {"timeout", "max_retries", "concurrency", "api_key_env", "usd_per_1m_input_tokens", "usd_per_1m_output_tokens",
               "batch", "batch_poll_seconds", "batch_max_requests", "batch_max_bytes"},  # batch: the same answers, half price
    "hf": {"device"},
}


def result_config(cfg: dict[str, Any]) -> dict[str, Any]:
    """The part of a generator entry that determines its prompts."""
    ignored = RUNTIME_KEYS.get(cfg.get("backend"), set())
    return {k: v for k, v in cfg.items() if k not in ignored}


def make_backend(generator: str, cfg: dict[str, Any], cache_dir: Path) -> PromptBackend:
    """Build the backend for one generator entry; `cache_dir` holds its response cache, if any."""
    options = dict(cfg)
    backend = options.pop("backend", None)
    try:
        if backend == "annotations":
            from cater.prompts.annotations import AnnotationsBackend

            return AnnotationsBackend(**options)
        if backend == "openai":
            from cater.prompts.openai_backend import OpenAIBackend

            return OpenAIBackend(cache_dir=cache_dir, **options)
        if backend == "hf":
            from cater.prompts.hf_backend import HFBackend

            return HFBackend(cache_dir=cache_dir, **options)
        if backend == "given":
            from cater.prompts.given import GivenBackend

            return GivenBackend(**options)
    except TypeError as exc:  # an unknown or missing option
        raise ValueError(f"params.yaml: prompts.generators.{generator}: {exc}") from None
    except ValueError as exc:
        raise ValueError(f"params.yaml: prompts.generators.{generator}: {exc}") from None
    raise ValueError(f"params.yaml: prompts.generators.{generator}.backend {backend!r} is unknown (known: {', '.join(BACKENDS)})")
