"""The tiny teacher checkpoints that several test files load (Video-LLaVA, IDEFICS, Chat-UniVi), written once per
session by the `tiny_teacher_checkpoints` fixture of tests/conftest.py."""
from __future__ import annotations

from pathlib import Path

FAMILIES = ("videollava", "idefics", "chatunivi")


def write_tiny_checkpoints(root: Path) -> dict[str, Path]:
    """{family: folder} of the three tiny checkpoints (seed 0) under `root`."""
    from cater.testing.tiny.chatunivi import write_tiny_chatunivi
    from cater.testing.tiny.flamingo import write_tiny_flamingo
    from cater.testing.tiny.videollava import write_tiny_videollava

    return {"videollava": write_tiny_videollava(root / "vl"), "idefics": write_tiny_flamingo(root / "id", backend="idefics"),
            "chatunivi": write_tiny_chatunivi(root / "cu")}
