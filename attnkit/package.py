"""The kit as installed (a wheel or a checkout alike): its folder and its pins, found through importlib, never
by walking up from a module to a checkout that an installed kit does not have."""
from __future__ import annotations

import importlib.metadata
import importlib.resources
from pathlib import Path


def kit_dir() -> Path:
    """The attnkit package's folder (the kernel's modules, the templates and the grader are read from here)."""
    return Path(str(importlib.resources.files("attnkit")))


def templates_dir() -> Path:
    """The kit's nbconvert templates (package data: feedback's MathJax, the formgrader's page)."""
    return kit_dir() / "templates"


def pins_text() -> str:
    """The kit's pinned requirements, one a line, as pyproject.toml declares them (from requirements.txt); empty
    where the kit runs uninstalled (on a path of its own, as in the Gradescope zip)."""
    try:
        return "".join(f"{req}\n" for req in importlib.metadata.requires("attnkit") or [])
    except importlib.metadata.PackageNotFoundError:
        return ""
