"""Where the course lives and how nbgrader is configured for it.

nbgrader ignores ``--config``; every command of the kit therefore loads
``course_config.py`` itself and hands the resulting Config to nbgrader's API.
"""
from __future__ import annotations

import os
import shutil
import sys
import tempfile
import threading
import warnings
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
    # nbgrader runs the `alembic` executable to upgrade a gradebook (a new one's version is read in-process below).
    bindir = str(Path(sys.executable).parent)
    if bindir not in os.environ.get("PATH", "").split(os.pathsep):
        os.environ["PATH"] = bindir + os.pathsep + os.environ.get("PATH", "")


def nbgrader_in_process() -> None:
    """nbgrader's gradebook, set up for a process that opens it many times: its schema head read in-process, one
    SQLAlchemy engine per database file. Idempotent; the kit calls it before any gradebook opens."""
    alembic_head_in_process()
    one_engine_per_database()


def alembic_head_in_process() -> None:
    """How does a new gradebook get its schema version without a second Python? nbgrader stamps it with its
    migrations' head revision by running the `alembic` executable (a whole interpreter start: 1-10 s on a busy
    host, once per new gradebook: every demo, every scratch course, every Gradescope submission). The head is
    read here, in-process and once, with alembic's own reader of the same migration scripts (tests: the same value,
    and no process started)."""
    import nbgrader
    import nbgrader.api as api
    from sqlalchemy.exc import SAWarning

    # nbgrader's gradebook triggers SQLAlchemy autoflush warnings that say nothing to course staff
    warnings.filterwarnings("ignore", category=SAWarning)
    if getattr(api.get_alembic_version, "in_process", False):
        return
    scripts = os.path.join(os.path.dirname(nbgrader.__file__), "alembic")
    found = []

    def get_alembic_version() -> str:
        if not found:
            from alembic.script import ScriptDirectory
            found.append(ScriptDirectory(scripts).get_current_head())
        return found[0]

    get_alembic_version.in_process = True
    api.get_alembic_version = get_alembic_version


def one_engine_per_database() -> None:
    """Why does nbgrader's gradebook cost 20-40 ms a notebook more than its queries? Each ``Gradebook()`` makes a new
    SQLAlchemy engine (nbgrader opens nine a notebook when autograding), so every query is compiled anew: the
    compiled-statement cache lives on the engine. SQLAlchemy means an engine to last a process; here one is kept per
    database file, process and thread (a fork or another thread makes its own), and ``Gradebook.close`` still
    returns its connections (``engine.dispose``). An in-memory database keeps nbgrader's own engine per gradebook."""
    import nbgrader.api as api

    if getattr(api.create_engine, "one_per_database", False):
        return
    made = api.create_engine
    engines: dict = {}

    def create_engine(url, *args, **kwargs):
        text = str(url)
        if args or not text.startswith("sqlite:///") or text in ("sqlite:///", "sqlite:///:memory:") \
                or "mode=memory" in text:
            return made(url, *args, **kwargs)
        key = (os.getpid(), threading.get_ident(), text, tuple(sorted(kwargs.items())))
        if key not in engines:
            engines[key] = made(url, **kwargs)
        return engines[key]

    create_engine.one_per_database = True
    api.create_engine = create_engine


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

        nbgrader_in_process()
        cfg = self.config()
        coursedir = CourseDirectory(config=cfg)
        api = NbGraderAPI(coursedir=coursedir, config=cfg)
        return api

    def gradebook(self):
        from nbgrader.api import Gradebook

        nbgrader_in_process()
        return Gradebook(self.db_url, course_id=self.config().CourseDirectory.course_id or "default_course")

    def graders(self) -> dict:
        """assignment -> its grader-only helper, relative to the course folder (``CourseExecute.graders``)."""
        found = self.config().get("CourseExecute", {}).get("graders", {})
        return dict(found.get_value({}) if hasattr(found, "get_value") else found)  # set, or only updated

    def grader_file(self, assignment: str) -> Path | None:
        """The assignment's grader-only helper, or None."""
        rel = self.graders().get(assignment)
        return self.path(rel) if rel else None

    def grader_files(self) -> dict:
        """Every configured grader helper: its path relative to the course folder -> its path here."""
        return {rel: self.path(rel) for rel in self.graders().values()}

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
        for rel, path in self.grader_files().items():  # beside source/, as the configuration names them
            if path.is_file():
                (dest / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, dest / rel)
        if with_release and self.path("release").is_dir():
            shutil.copytree(self.path("release"), dest / "release",
                            ignore=shutil.ignore_patterns("__pycache__", ".ipynb_checkpoints"))
        return Course(dest)
