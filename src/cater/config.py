"""params.yaml, loaded once and validated: unknown keys and bad values are errors."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from cater.params_schema import REQUIRED_SECTIONS, ConfigError, validate

__all__ = ["ConfigError", "load_params"]


def load_params(path: str | Path = "params.yaml", required: tuple[str, ...] | None = None) -> dict[str, Any]:
    """Load and validate params; `required` names the sections that must be present (default: all stages')."""
    from ruamel.yaml import YAML
    from ruamel.yaml.error import YAMLError

    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path}: not found (run from the repository root)")
    with path.open(encoding="utf-8") as handle:
        try:
            # YAML 1.2, as DVC reads and rewrites it (`dvc exp run -S`): `no`/`yes`/`on` stay strings
            params = YAML(typ="safe", pure=True).load(handle) or {}
        except YAMLError as exc:
            raise ConfigError(f"{path}: invalid YAML ({exc})") from None
    if not isinstance(params, dict):
        raise ConfigError(f"{path}: top level must be a mapping")
    validate(params, str(path), REQUIRED_SECTIONS if required is None else required)
    return params
