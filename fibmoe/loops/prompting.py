"""Prompt files: plain text under fibmoe/loops/prompts/, `$name` placeholders (string.Template).

`--prompts DIR` points at a folder of the user's own versions; a file there replaces the packaged file
of the same name, the others stay as shipped.
"""

from __future__ import annotations

import string
from pathlib import Path

from ..errors import FibmoeError

PACKAGED = Path(__file__).resolve().parent / "prompts"


def load(name: str, override_dir: str | Path | None = None) -> string.Template:
    for folder in ([Path(override_dir)] if override_dir else []) + [PACKAGED]:
        path = folder / name
        if path.is_file():
            return string.Template(path.read_text())
    raise FibmoeError(f"prompt file {name} not found (looked in {override_dir or ''} {PACKAGED})")


def render(name: str, override_dir: str | Path | None = None, **values) -> str:
    return load(name, override_dir).safe_substitute({k: str(v) for k, v in values.items()})
