"""bundle: the zip students get (never the course repository, which holds the solutions).

dist/<assignment>-student.zip unpacks to one folder <assignment>/ with the released notebooks,
their helper file(s), ``selfcheck.py`` (the self-check, needing only nbformat and nbclient),
a student README and ``requirements.txt``: the packages the notebooks need, pinned, with the
course's exact versions as constraints. nbgrader is not among them, so JupyterLab shows the
student no instructor tools. The staged folder is scanned like a release before it is zipped.
"""
from __future__ import annotations

import re
import shutil
import tempfile
import zipfile
from pathlib import Path

from attnkit.course import Course
from attnkit.package import kit_dir, pins_text
from attnkit.authoring.release import problems, secret_scan

# What a student's environment needs: the notebooks' imports, JupyterLab, the self-check.
STUDENT_PACKAGES = ("torch", "numpy", "matplotlib", "jupyterlab", "ipykernel", "nbformat", "nbclient")
# Course tools that a student must not get (the formgrader and Create Assignment panels).
INSTRUCTOR_ONLY = ("nbgrader",)

README = """# {assignment}: student copy

Set up once (Python 3.11, the version the course tests with):

    python3 -m venv .venv
    .venv/bin/python -m pip install -r requirements.txt

Work in JupyterLab:

    .venv/bin/jupyter lab

Open each notebook, fill in the blanks `_____` (or replace `raise NotImplementedError()`), and
before you submit run Kernel -> Restart & Run All. It runs every cell, and each test cell ends with
one line for its part: `ok`, `FAIL` (what is wrong), `BLANK` (a blank `_____` still there) or `TODO`
(not written yet). Do not delete or edit the locked test cells: they are put back before grading anyway.

Self-check (exit status 0 when every visible test passes, no graded blank is left and every
written answer is filled in; it lists what is missing):

    .venv/bin/python selfcheck.py {first}

A cell that no test grades (an experiment) may keep its blank: the self-check calls it optional.
A part whose visible check could not check it (another blank stopped it) counts as not checked,
not as passed. Written answers are graded by hand after the deadline.

The visible tests check the format and basic behaviour of each part; hidden tests run other
inputs when your work is graded. `{helpers}` holds the checking helpers; grading uses the
course's copy, not yours. Submit the notebooks (`.ipynb` files) as your course tells you.
"""


def _pins(requirements: str) -> dict[str, str]:
    """name (normalised) -> the requirement line, from a fully pinned requirements file's text."""
    pins = {}
    for line in requirements.splitlines():
        line = line.split("#", 1)[0].strip()
        m = re.match(r"([A-Za-z0-9_.\-]+)\s*==", line)
        if m:
            pins[re.sub(r"[-_.]+", "-", m.group(1)).lower()] = line
    return pins


def requirements_text(course: Course) -> tuple[str, str]:
    """(requirements.txt, constraints.txt) of the student environment."""
    # the course's pins, or (a scratch course) those of the kit it runs on
    path = course.path("requirements.txt")
    pins = _pins(path.read_text() if path.exists() else pins_text())
    missing = [p for p in STUDENT_PACKAGES if p not in pins]
    if missing:
        raise SystemExit(f"error: requirements.txt pins no version of {', '.join(missing)}")
    top = "\n".join(pins[p] for p in STUDENT_PACKAGES)
    constraints = "\n".join(line for name, line in sorted(pins.items()) if name not in INSTRUCTOR_ONLY)
    return (f"# The packages these notebooks need (exact versions in constraints.txt).\n{top}\n-c constraints.txt\n",
            f"# Versions the course tested with.\n{constraints}\n")


def bundle(course: Course, assignment: str, log=print) -> Path:
    release_dir = course.path("release", assignment)
    if not release_dir.is_dir():
        raise SystemExit(f"error: release/{assignment} does not exist: run ./kit release {assignment} first")
    bad = problems(course, assignment)
    if bad:
        raise SystemExit("error: release/%s is not clean, no bundle written:\n  %s" % (assignment, "\n  ".join(bad)))
    stage = Path(tempfile.mkdtemp(prefix="attnkit-bundle-"))
    try:
        folder = stage / assignment
        shutil.copytree(release_dir, folder, ignore=shutil.ignore_patterns("__pycache__", ".ipynb_checkpoints"))
        shutil.copy2(kit_dir() / "student" / "selfcheck.py", folder / "selfcheck.py")
        reqs, constraints = requirements_text(course)
        (folder / "requirements.txt").write_text(reqs)
        (folder / "constraints.txt").write_text(constraints)
        notebooks = sorted(p.name for p in folder.glob("*.ipynb"))
        helpers = sorted(p.name for p in folder.glob("*.py") if p.name != "selfcheck.py")
        (folder / "README.md").write_text(README.format(assignment=assignment, first=notebooks[0] if notebooks else "",
                                                        helpers=", ".join(helpers) or "-"))
        leaks = secret_scan(course, assignment, folder)
        if leaks:
            raise SystemExit("error: the bundle would give answers away, not written:\n  " + "\n  ".join(leaks))
        out = course.path("dist", f"{assignment}-student.zip")
        out.parent.mkdir(exist_ok=True)
        tmp = out.with_suffix(".zip.part")
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
            for path in sorted(folder.rglob("*")):
                if path.is_file():
                    zf.write(path, path.relative_to(stage).as_posix())
        tmp.replace(out)
        log(f"wrote {out.relative_to(course.root)}: {len(notebooks)} notebooks, {', '.join(helpers)}, selfcheck.py, "
            "README.md, requirements.txt (no solutions, hidden tests or instructor tools)")
        return out
    finally:
        shutil.rmtree(stage, ignore_errors=True)
