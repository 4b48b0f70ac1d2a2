"""Course content lives beside the course, never in the kit: the package names no assignment; an assignment's
grader helper (graders/) is neither released to students nor readable by the kernel. Fast tier (a few seconds)."""
from __future__ import annotations

import os
import re
import shutil
import stat
from pathlib import Path

from attnkit import sandbox
from attnkit.course import Course
from attnkit.grader import hidden
from attnkit.inprocess import in_process
from attnkit.authoring.release import generate

ROOT = Path(__file__).resolve().parents[1]
KIT = ROOT / "attnkit"
COURSE_WORDS = re.compile(r"hw9|MultiHeadAttention|attention_checks|split_heads", re.I)


def test_the_package_names_no_assignment():
    """Does no file of the package (code, docstrings, templates) name the homework, its helper or its classes?"""
    found = []
    for path in sorted(KIT.rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts:
            text = path.read_bytes().decode("utf-8", "ignore")
            found += [f"{path.relative_to(ROOT)}:{n}" for n, line in enumerate(text.splitlines(), 1)
                      if COURSE_WORDS.search(line)]
    assert found == []


def test_the_course_configuration_names_each_assignments_grader_helper():
    """Does course_config.py name graders/hw9.py for hw9, outside source/ (so nbgrader never copies it)?"""
    grader = Course(ROOT).grader_file("hw9")
    assert grader == ROOT / "graders" / "hw9.py" and grader.is_file()
    assert ROOT / "source" not in grader.parents


def test_a_grader_helper_is_never_released_and_its_code_is_in_no_released_file():
    """Does a fresh release of a scratch course (which carries graders/) hold no file and no function of the
    grader helper?"""
    course = Course(ROOT).scratch_copy(notebooks=["q12_scaled_dot_product"])
    try:
        assert course.path("graders", "hw9.py").is_file()   # the scratch course has it to grade with
        generate(course, "hw9")
        released = [p for p in course.path("release").rglob("*") if p.is_file()]
        assert released and not [p for p in released if p.name == "hw9.py" or "graders" in p.parts]
        # its own lines (not those it shares with the course helper students receive by design)
        helper = "\n".join(p.read_text() for p in course.path("source", "hw9").glob("*.py"))
        lines = {ln.strip() for ln in course.path("graders", "hw9.py").read_text().splitlines()
                 if len(ln.strip()) >= 40 and ln.strip() not in helper}
        assert len(lines) > 100
        for path in released:
            text = path.read_text(errors="ignore")
            assert not [ln for ln in lines if ln in text], path.name
    finally:
        shutil.rmtree(course.root, ignore_errors=True)


def _bound_sources(argv: list[str]) -> list[str]:
    """The host paths a bwrap command line binds (every bind option's first argument)."""
    binds = {"--bind", "--ro-bind", "--dev-bind", "--bind-try", "--ro-bind-try", "--dev-bind-try"}
    return [argv[i + 1] for i, a in enumerate(argv[:-1]) if a in binds]


def test_the_sandbox_binds_no_grader_helper_and_no_bank(tmp_path):
    """Does the kernel's sandbox, given the grader's copies beside a notebook, bind neither graders/ nor banks/,
    nor any folder above them?"""
    work = tmp_path / "work"
    work.mkdir()
    shutil.copy2(ROOT / "source" / "hw9" / "attention_checks.py", work)
    argv = sandbox.bwrap_argv(["/bin/true"], uid=sandbox.UID_BASE, workfiles=sandbox.workdir_files(str(work)),
                              run_dir=str(tmp_path / "run"), env={})
    secret = [ROOT / "graders" / "hw9.py", ROOT / "banks" / "hw9"]
    for source in _bound_sources(argv):
        for path in secret:
            assert not (path == Path(source) or Path(source) in path.parents), (source, path)


def test_the_setpriv_fallback_hides_graders_and_banks(tmp_path):
    """Where the fallback runs the kernel as another uid on the host, are graders/ and banks/ unreadable to it?"""
    for name in ("graders", "banks"):
        (tmp_path / name).mkdir()
        os.chmod(tmp_path / name, 0o755)
    changed = sandbox.protect(str(tmp_path))
    assert sorted(Path(p).name for p in changed) == ["banks", "graders"]
    for name in ("graders", "banks"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) & 0o007 == 0


def test_a_hidden_test_that_imports_a_moved_name_from_the_kit_still_runs():
    """Does a hidden region written for the previous release (``from attnkit.grader.checks import softmax_ref``)
    still find the name, now in its grader helper, and does a name no helper has still fail?"""
    region = hidden.GRADER_LINE + "\nfrom attnkit.grader.checks import softmax_ref\nprint(callable(softmax_ref))\n"
    printed, error = hidden.run(region, in_process({}), ROOT / "source" / "hw9", grader=ROOT / "graders" / "hw9.py")
    assert (printed, error) == ("True\n", None)
    printed, error = hidden.run(region.replace("softmax_ref", "no_such_check"), in_process({}), ROOT / "source" / "hw9",
                                grader=ROOT / "graders" / "hw9.py")
    assert error is not None and error["ename"] == "ImportError"
