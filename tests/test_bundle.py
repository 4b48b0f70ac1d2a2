"""The student bundle: what students get instead of the course repository."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from attnkit.authoring import notebooks as nbu
from attnkit.course import Course
from attnkit.authoring.release import secret_scan
import early
from harness import kit

ROOT = Path(__file__).resolve().parents[1]
NB = "q3_multihead_attention"


@pytest.fixture(scope="module")
def course():
    """A scratch copy of the course with the committed release (bundles are built from release/)."""
    c = Course(ROOT).scratch_copy(with_release=True)
    yield c
    shutil.rmtree(c.root, ignore_errors=True)


@pytest.fixture(scope="module")
def unpacked(course, tmp_path_factory):
    out = kit(course.root, "bundle", "hw9")
    assert out.returncode == 0, out.stdout + out.stderr
    dest = tmp_path_factory.mktemp("student")
    with zipfile.ZipFile(course.path("dist", "hw9-student.zip")) as zf:
        zf.extractall(dest)
    return dest / "hw9"


def test_bundle_holds_the_release_and_no_secret(course, unpacked):
    """Does the zip hold the released notebooks, the helper, the self-check, a README and
    pinned requirements -- and pass the same secret scan as the release?"""
    names = sorted(p.name for p in unpacked.iterdir())
    release = sorted(p.name for p in course.path("release", "hw9").iterdir() if p.name != "__pycache__")
    assert set(release) <= set(names)
    assert {"selfcheck.py", "README.md", "requirements.txt", "constraints.txt"} <= set(names)
    assert secret_scan(course, "hw9", unpacked) == []
    for name in release:  # the notebooks and the helper are the released files, byte for byte
        assert (unpacked / name).read_bytes() == course.path("release", "hw9", name).read_bytes()
    reqs = (unpacked / "requirements.txt").read_text() + (unpacked / "constraints.txt").read_text()
    assert "torch==2.13.0" in reqs and "jupyterlab==" in reqs and "nbgrader" not in reqs.lower()
    readme = (unpacked / "README.md").read_text()
    assert "selfcheck.py" in readme and "source" not in readme


def test_bundle_refuses_a_release_that_states_an_answer(course, tmp_path):
    """Is no bundle written when a released cell gives an answer away?"""
    scratch = Course(ROOT).scratch_copy(with_release=True)
    try:
        declared = [t for src in scratch.path("source", "hw9").glob("*.ipynb") for _, t in nbu.answer_texts(nbu.read(src))]
        if not declared:
            pytest.skip("no notebook declares an ANSWER TEXT yet")
        path = scratch.path("release", "hw9", f"{NB}.ipynb")
        nb = nbu.read(path)
        nb.cells[0].source += f"\n\nHint: {declared[0]}"
        nbu.write(nb, path)
        out = kit(scratch.root, "bundle", "hw9")
        assert out.returncode != 0 and "states the answer" in out.stdout + out.stderr
        assert not scratch.path("dist", "hw9-student.zip").exists()
    finally:
        shutil.rmtree(scratch.root, ignore_errors=True)


@early.job
def bundle_venv():
    """(the unpacked bundle, a fresh venv made from its requirements only, pip's process), made as the session
    starts (pip: a minute or more, while other tests grade)."""
    tmp = Path(early.scratch("bundle"))
    scratch = Course(ROOT).scratch_copy(parent=str(tmp), with_release=True)
    out = kit(scratch.root, "bundle", "hw9", cwd=tmp)
    assert out.returncode == 0, out.stdout + out.stderr
    with zipfile.ZipFile(scratch.path("dist", "hw9-student.zip")) as zf:
        zf.extractall(tmp / "student")
    unpacked = tmp / "student" / "hw9"
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120, cwd=tmp)
    # (--no-compile: byte-compiling torch's files is half the install's time here, and nothing it tests)
    pip = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check",
                          "--no-compile", "-r", "requirements.txt"], cwd=unpacked, capture_output=True, text=True,
                         timeout=1200)
    return unpacked, venv, pip


@pytest.mark.slow
@pytest.mark.early("bundle_venv")
def test_self_check_works_from_the_bundle_alone(course):
    """In a fresh virtual environment made from the bundle's requirements only: does the self-check
    exit 1 on the untouched release and 0 on a solved notebook, with no nbgrader tools installed?"""
    unpacked, venv, pip = early.result("bundle_venv")
    py = venv / "bin" / "python"
    assert pip.returncode == 0, pip.stderr[-3000:]
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    assert subprocess.run([str(py), "-c", "import nbgrader"], capture_output=True, env=env).returncode != 0
    ext = subprocess.run([str(venv / "bin" / "jupyter"), "labextension", "list"], capture_output=True, text=True,
                         env=env, timeout=120)
    assert ext.returncode == 0 and "nbgrader" not in (ext.stdout + ext.stderr).lower()

    untouched = subprocess.run([str(py), "selfcheck.py", f"{NB}.ipynb"], cwd=unpacked, capture_output=True, text=True,
                               env=env, timeout=600)
    assert untouched.returncode == 1, untouched.stdout + untouched.stderr
    assert "BLANK" in untouched.stdout and "FAIL" in untouched.stdout

    solved = unpacked / "solved"
    solved.mkdir()
    for helper in unpacked.glob("*.py"):
        shutil.copy2(helper, solved / helper.name)
    nbu.write(nbu.fill(nbu.read(course.path("source", "hw9", f"{NB}.ipynb"))), solved / f"{NB}.ipynb")
    done = subprocess.run([str(py), "../selfcheck.py", f"{NB}.ipynb"], cwd=solved, capture_output=True, text=True,
                          env=env, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Success" in done.stdout
