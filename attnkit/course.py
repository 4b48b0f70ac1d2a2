"""Where the course lives and how nbgrader is configured for it.

nbgrader ignores ``--config``; every command of the kit therefore loads
``course_config.py`` itself and hands the resulting Config to nbgrader's API.
"""
from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

from traitlets.config import Config
from traitlets.config.loader import PyFileConfigLoader

CONFIG_FILE = "course_config.py"


def find_root(start: str | os.PathLike | None = None) -> Path:
    """The nearest folder at or above ``start`` that holds course_config.py."""
    here = Path(start or os.getcwd()).resolve()
    for folder in [here, *here.parents]:
        if (folder / CONFIG_FILE).is_file():
            return folder
    raise SystemExit(f"error: no {CONFIG_FILE} found in {here} or any folder above it")


def _ensure_tools_on_path() -> None:
    # nbgrader runs the `alembic` executable when it creates a gradebook.
    bindir = str(Path(sys.executable).parent)
    if bindir not in os.environ.get("PATH", "").split(os.pathsep):
        os.environ["PATH"] = bindir + os.pathsep + os.environ.get("PATH", "")


def alembic_head() -> str | None:
    """The head of nbgrader's gradebook migrations as its migration files chain them (what ``alembic heads``
    prints), or None if they do not name exactly one."""
    import re

    import nbgrader

    revisions, replaced = set(), set()
    for script in (Path(nbgrader.__file__).parent / "alembic" / "versions").glob("*.py"):
        text = script.read_text()
        rev = re.search(r"^revision = '(\w+)'$", text, re.M)
        down = re.search(r"^down_revision = (?:'(\w+)'|None)$", text, re.M)
        if not rev or not down:
            return None
        revisions.add(rev.group(1))
        replaced.update([down.group(1)] if down.group(1) else [])
    heads = revisions - replaced
    return heads.pop() if len(heads) == 1 else None


def _known_alembic_head(api) -> None:
    """nbgrader starts ``alembic heads`` (a process: about 0.5 s, 110 MB) for every new gradebook to learn a constant
    of its own files: read it from them once instead (nbgrader asks alembic as before where they cannot say)."""
    if getattr(api.get_alembic_version, "attnkit_head", None):
        return
    head = alembic_head()
    if head:
        def get_alembic_version() -> str:
            return head

        get_alembic_version.attnkit_head = head
        api.get_alembic_version = get_alembic_version


class Course:
    """A course root: source/, release/, submitted/, autograded/, feedback/, gradebook.db."""

    def __init__(self, root: str | os.PathLike | None = None):
        self.root = find_root(root) if root is None else Path(root).resolve()
        _ensure_tools_on_path()

    # -- paths ---------------------------------------------------------------
    def path(self, *parts: str) -> Path:
        return self.root.joinpath(*parts)

    @property
    def db_url(self) -> str:
        return f"sqlite:///{self.root / 'gradebook.db'}"

    def assignments(self) -> list[str]:
        src = self.path("source")
        return sorted(p.name for p in src.iterdir() if p.is_dir() and not p.name.startswith("."))

    def notebooks(self, assignment: str, where: str = "source") -> list[str]:
        folder = self.path(where, assignment)
        return sorted(p.stem for p in folder.glob("*.ipynb"))

    def students(self, assignment: str | None = None) -> list[str]:
        sub = self.path("submitted")
        if not sub.is_dir():
            return []
        out = []
        for p in sorted(sub.iterdir()):
            if p.is_dir() and (assignment is None or (p / assignment).is_dir()):
                out.append(p.name)
        return out

    # -- nbgrader configuration ---------------------------------------------------------
    def config(self) -> Config:
        cfg = PyFileConfigLoader(CONFIG_FILE, path=str(self.root)).load_config()
        cfg.CourseDirectory.root = str(self.root)
        cfg.CourseDirectory.db_url = self.db_url
        return cfg

    def api(self):
        from nbgrader.apps import NbGraderAPI
        from nbgrader.coursedir import CourseDirectory

        cfg = self.config()
        coursedir = CourseDirectory(config=cfg)
        api = NbGraderAPI(coursedir=coursedir, config=cfg)
        return api

    def gradebook(self):
        import nbgrader.api
        from nbgrader.api import Gradebook

        _known_alembic_head(nbgrader.api)
        return Gradebook(self.db_url, course_id=self.config().CourseDirectory.course_id or "default_course")

    # -- scratch copies ------------------------------------------------------------------
    def scratch_copy(self, with_release: bool = False, parent: str | None = None,
                     notebooks: list[str] | None = None) -> "Course":
        """A throw-away course with the same config and sources (never touches this gradebook).

        ``notebooks`` keeps only those notebook stems (and every non-notebook file)."""
        dest = Path(tempfile.mkdtemp(prefix="attnkit-", dir=parent))
        shutil.copy2(self.path(CONFIG_FILE), dest / CONFIG_FILE)
        skip = shutil.ignore_patterns("__pycache__", ".ipynb_checkpoints")

        def ignore(folder, names):
            dropped = set(skip(folder, names))
            if notebooks is not None:
                dropped |= {n for n in names if n.endswith(".ipynb") and n[:-6] not in notebooks}
            return dropped

        shutil.copytree(self.path("source"), dest / "source", ignore=ignore)
        if with_release and self.path("release").is_dir():
            shutil.copytree(self.path("release"), dest / "release",
                            ignore=shutil.ignore_patterns("__pycache__", ".ipynb_checkpoints"))
        return Course(dest)
