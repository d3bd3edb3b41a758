"""A local model directory given to the gateway (`versions register --model`, `ALIGNGATE_VERSIONS`, the YAML) that
is a team's RLHF checkpoint rather than an aligngate version: imported on the fly into the cache directory
(`training.import_checkpoint.import_for_serving`: a TRL value-head checkpoint becomes a version with its head
served in the pass; an OpenRLHF critic is refused with the command that imports it with its policy).

The cheap test first: an aligngate version (manifest.json or value_head/) or a directory without config.json (the
register path answers that one itself) needs no look at the weights, and so no torch import.
"""

from __future__ import annotations

from pathlib import Path

from kernels.layout import VALUE_HEAD_FILE


def may_need_import(model_dir: str | Path) -> bool:
    d = Path(model_dir)
    return (d / "config.json").is_file() and not (d / "manifest.json").is_file() and not (d / VALUE_HEAD_FILE).is_file()


def servable_dir(model_dir: str | Path, cache_dir: str | Path) -> tuple[str, str | None]:
    """(directory to serve, layout imported or None). Blocking (reads and may write weights): run in a thread.
    Raises training.import_checkpoint.ImportRefused (a ValueError) with what to do instead."""
    if not may_need_import(model_dir):
        return str(model_dir), None
    from training.import_checkpoint import import_for_serving

    out, layout = import_for_serving(model_dir, cache_dir)
    return str(out), layout
