"""validate: the student's self-check (attnkit.student.selfcheck) run on the course's kernel, for
course staff and students working in a clone of the kit."""
from __future__ import annotations

import os
from pathlib import Path

from traitlets.config import Config

from attnkit.authoring import notebooks as nbu
from attnkit.course import Course, find_root
from attnkit.student.selfcheck import report


def run_notebook(path: Path, config: Config | None = None, assignment: str | None = None):
    """Run the notebook at ``path``; ``assignment``: the one whose grader helper its hidden tests use."""
    from nbgrader import utils

    from attnkit.preprocessors.execute import CourseExecute

    nb = nbu.read(path)
    config = config or Config()
    config.CourseKernelManager.sandbox = "none"  # the student's own machine and own notebook
    ex = CourseExecute(config=config)
    with utils.setenv(NBGRADER_EXECUTION="validate"):
        resources = {"metadata": {"path": str(path.parent)}}
        if assignment:
            resources["nbgrader"] = {"assignment": assignment}
        nb, _ = ex.preprocess(nb, resources)
    return nb


def validate(path: str | os.PathLike, log=print) -> int:
    """Run the notebook; report each test cell and each unfilled blank. Returns the exit code."""
    path = Path(path).resolve()
    if not path.exists():
        log(f"error: {path} does not exist")
        return 2
    course = Course(find_root(path.parent)) if _has_course(path) else None
    config = course.config() if course else Config()
    # a notebook of source/<A>/ or release/<A>/ in a course that holds <A>'s grader helper: its hidden tests use it
    grader = course.grader_file(path.parent.name) if course else None
    try:
        nb = run_notebook(path, config, path.parent.name if grader is not None and grader.is_file() else None)
    except Exception as exc:
        log(f"error: could not run {path.name}: {type(exc).__name__}: {exc}")
        return 2
    return report(nb, path.name, log)


def _has_course(path: Path) -> bool:
    return any((p / "course_config.py").is_file() for p in [path.parent, *path.parents])

