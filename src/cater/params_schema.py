"""The allowed shape of params.yaml. Sections register their keys here; validation is strict."""
from __future__ import annotations

from typing import Any


def validate(params: dict[str, Any], source: str) -> None:  # filled in as stages land
    return None
