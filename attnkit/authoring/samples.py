"""Sample submissions for the demo, built from source/ so no solution text lives elsewhere, and the
demo's own course folder (``demo/`` beside source/, gitignored), so that the samples never reach the
real course's submitted/, gradebook, formgrader or LMS exports."""
from __future__ import annotations

import shutil
from pathlib import Path

from attnkit.authoring import markup
from attnkit.authoring import notebooks as nbu
from attnkit.course import Course

DEMO_DIR = "demo"
MARKER = ".attnkit-demo"   # only a folder carrying it is ever emptied by the demo
SAMPLES = {
    "sample-solution": "every blank filled with the instructor's solution",
    "sample-untouched": "the release copy, submitted without changes",
    "sample-partial": "the first half of the blanks filled in, the rest left as released",
}


def partial(source_nb):
    """A student halfway through: the first half of the blanks filled in, the rest as released."""
    answers = {}
    found = nbu.regions(source_nb)
    for i, region in enumerate(found):
        if i >= (len(found) + 1) // 2:
            stub = region.stub or markup.CODE_STUB.split("\n")
            if region.cell_id and _is_markdown(source_nb, region.cell_id):
                stub = region.stub or [markup.TEXT_STUB]
            answers[region.label] = "\n".join(stub)
    return nbu.fill(source_nb, answers)


def _is_markdown(nb, gid) -> bool:
    return any(nbu.grade_id(c) == gid and c.cell_type == "markdown" for c in nb.cells)


def place(course: Course, assignment: str) -> list[str]:
    """Write the sample submissions into submitted/<student>/<assignment>/."""
    for sid in SAMPLES:
        dest = course.path("submitted", sid, assignment)
        if dest.exists():
            shutil.rmtree(dest)
        dest.mkdir(parents=True)
        for src in sorted(course.path("source", assignment).glob("*.ipynb")):
            snb = nbu.read(src)
            if sid == "sample-solution":
                nb = nbu.fill(snb)
            elif sid == "sample-untouched":
                shutil.copy2(course.path("release", assignment, src.name), dest / src.name)
                continue
            else:
                nb = partial(snb)
            nbu.write(nb, dest / src.name)
    return list(SAMPLES)


def demo_course(real: Course) -> Course:
    """A fresh course in ``<real root>/demo/``: the real course's configuration and source/ only
    (its gradebook, submitted/, release/ stay untouched). A ``demo/`` the demo did not make is
    refused, never emptied."""
    if (real.root / MARKER).exists():  # run from inside the demo folder: use its real course
        real = Course(real.root.parent)
    root = real.path(DEMO_DIR)
    if root.exists() or root.is_symlink():
        if root.is_symlink() or not (root / MARKER).is_file():
            raise SystemExit(f"error: {root} exists and is not the demo's folder (no {MARKER} in it); "
                             f"move it away, the demo puts its own course there")
        shutil.rmtree(root)
    root.mkdir()
    (root / MARKER).write_text("made by ./kit demo; emptied by the next ./kit demo\n")
    for name in ("course_config.py", "nbgrader_config.py"):
        if real.path(name).is_file():
            shutil.copy2(real.path(name), root / name)
    shutil.copytree(real.path("source"), root / "source",
                    ignore=shutil.ignore_patterns("__pycache__", ".ipynb_checkpoints"))
    for rel, path in real.grader_files().items():  # each assignment's grader helper, where the configuration names it
        if path.is_file():
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, root / rel)
    return Course(Path(root))
