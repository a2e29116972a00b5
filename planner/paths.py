"""Where the data folders (profiles/, rules/, templates/) and the bundled text live.

From a source checkout or an editable install they are the folders at the repository root; from a wheel they are
bundled under `planner/_bundled/` (see pyproject.toml).
"""

from __future__ import annotations

import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
_REPO_ROOT = PACKAGE_DIR.parent
_BUNDLED = PACKAGE_DIR / "_bundled"


def data_dir(name: str) -> Path:
    """The folder `name` (one of profiles, rules, templates), from a wheel or a source checkout."""
    for base in (_BUNDLED, _REPO_ROOT):
        candidate = base / name
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"data folder {name!r} not found under {_BUNDLED} or {_REPO_ROOT}")


def profiles_dir() -> Path:
    return data_dir("profiles")


def gpus_dir() -> Path:
    return profiles_dir() / "gpus"


def rules_dir() -> Path:
    return data_dir("rules")


def templates_dir() -> Path:
    return data_dir("templates")


def text_dir() -> Path:
    """Bundled calibration and held-out text (see planner/data/SOURCES.md)."""
    return PACKAGE_DIR / "data"


def cache_dir() -> Path:
    """Cache root: $PLANNER_CACHE, else ~/.cache/planner."""
    root = os.environ.get("PLANNER_CACHE")
    path = Path(root).expanduser() if root else Path.home() / ".cache" / "planner"
    return path
