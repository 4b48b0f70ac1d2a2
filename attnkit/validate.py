"""validate: the student's self-check. Runs a notebook and exits non-zero if a visible
test fails (nbgrader's validate always exits 0)."""
from __future__ import annotations

import os
from pathlib import Path

from traitlets.config import Config

from attnkit import notebooks as nbu
from attnkit.course import Course, find_root

BLANK_MARKERS = ("_____", "raise NotImplementedError")


def run_notebook(path: Path, config: Config | None = None):
    from nbgrader import utils

    from attnkit.sandbox import CourseExecute

    nb = nbu.read(path)
    config = config or Config()
    config.CourseKernelManager.sandbox = "none"  # the student's own machine and own notebook
    ex = CourseExecute(config=config)
    with utils.setenv(NBGRADER_EXECUTION="validate"):
        nb, _ = ex.preprocess(nb, {"metadata": {"path": str(path.parent)}})
    return nb


def validate(path: str | os.PathLike, log=print) -> int:
    """Run the notebook; report each test cell and each unfilled blank. Returns the exit code."""
    path = Path(path).resolve()
    if not path.exists():
        log(f"error: {path} does not exist")
        return 2
    config = Course(find_root(path.parent)).config() if _has_course(path) else Config()
    try:
        nb = run_notebook(path, config)
    except Exception as exc:
        log(f"error: could not run {path.name}: {type(exc).__name__}: {exc}")
        return 2
    failed, passed, blanks = [], 0, []
    for cell in nb.cells:
        gid = nbu.grade_id(cell) or "?"
        if nbu.is_answer_cell(cell) and cell.cell_type == "code" and any(m in cell.source for m in BLANK_MARKERS):
            blanks.append(gid)
        if cell.cell_type != "code" or nbu.is_answer_cell(cell):
            continue
        errors = [o for o in cell.get("outputs", []) if o.output_type == "error"]
        if nbu.is_test_cell(cell) or nbu.meta(cell).get("locked"):
            if errors:
                failed.append((gid, f"{errors[0].ename}: {errors[0].evalue}"))
            elif nbu.is_test_cell(cell):
                passed += 1
    for gid in blanks:
        log(f"BLANK  {gid}: still has a blank (_____ or NotImplementedError) to fill in")
    for gid, msg in failed:
        log(f"FAIL   {gid}: {msg.splitlines()[0] if msg else ''}")
    log(f"{path.name}: {passed} visible test cells passed, {len(failed)} failed, {len(blanks)} answer cells unfinished")
    if not failed and not blanks:
        log("Success: every visible test passes. Hidden tests run at grading time.")
    return 1 if failed or blanks else 0


def _has_course(path: Path) -> bool:
    return any((p / "course_config.py").is_file() for p in [path.parent, *path.parents])

