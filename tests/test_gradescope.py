"""The course's round trip through the real commands: the Gradescope autograder zip and its
``run_autograder``, ``setup.sh``, collecting LMS exports, and the Canvas export.

Grading is restricted to Q3 (the fastest notebook): the zip holds all four notebooks, the
submissions only Q3, so the other three must come back 0 "not submitted". Each graded
result is made once (module-scoped fixtures) and checked by several tests.
"""
from __future__ import annotations

import csv
import io
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from attnkit.authoring import notebooks as nbu
from attnkit.course import Course
from attnkit.authoring.samples import partial
import early
from harness import kit

ROOT = Path(__file__).resolve().parents[1]
NB = "q3_multihead_attention"
SOURCE = ROOT / "source" / "hw9"
STEMS = sorted(p.stem for p in SOURCE.glob("*.ipynb"))


def solved(stem=NB):
    return nbu.fill(nbu.read(SOURCE / f"{stem}.ipynb"))


def nb_bytes(nb) -> bytes:
    buf = io.StringIO()
    import nbformat
    nbformat.write(nb, buf)
    return buf.getvalue().encode()


def auto_points(stem=NB) -> dict:
    """grade_id -> points of the autograded (test) cells of a source notebook."""
    nb = nbu.read(SOURCE / f"{stem}.ipynb")
    return {nbu.grade_id(c): float(nbu.meta(c)["points"]) for c in nb.cells if nbu.is_test_cell(c)}


def secret_lines() -> list[str]:
    return [l for p in SOURCE.glob("*.ipynb") for l in nbu.hidden_lines(nbu.read(p))]


# -- results.json schema --------------------------------------------------------------------
VISIBILITY = {"visible", "hidden", "after_due_date", "after_published"}


def check_schema(res: dict) -> None:
    """The keys and types Gradescope reads, as the kit writes them."""
    assert set(res) == {"score", "execution_time", "output", "tests", "stdout_visibility"}, set(res)
    assert isinstance(res["score"], (int, float)) and isinstance(res["execution_time"], (int, float))
    assert isinstance(res["output"], str) and res["output"] and res["stdout_visibility"] == "hidden"
    assert isinstance(res["tests"], list)
    for t in res["tests"]:
        assert set(t) == {"name", "score", "max_score", "status", "output", "visibility"}, t
        assert isinstance(t["name"], str) and isinstance(t["output"], str) and t["output"]
        assert isinstance(t["score"], float) and isinstance(t["max_score"], float) and 0 <= t["score"] <= t["max_score"]
        assert t["status"] == ("passed" if t["score"] >= t["max_score"] else "failed"), t
        assert t["visibility"] in VISIBILITY
    # every test is an autograded part: a written answer is no test (Gradescope would show it red or green)
    assert not [t for t in res["tests"] if "written" in t["name"]]
    assert res["score"] == pytest.approx(sum(t["score"] for t in res["tests"]))
    text = json.dumps(res, ensure_ascii=False)
    leaked = [line for line in secret_lines() if line in text]
    assert not leaked, leaked[:3]


def by_name(res: dict) -> dict:
    return {t["name"]: t for t in res["tests"]}


def part(nb: str, gid: str) -> str:
    """A part's name on Gradescope: as the homework names it (the source notebook's labels)."""
    return nbu.part_label(nbu.part_labels(nbu.read(SOURCE / f"{nb}.ipynb")), gid)


def of(nb: str) -> set:
    """The names of every graded part of notebook ``nb``."""
    return {part(nb, nbu.grade_id(c)) for c in nbu.read(SOURCE / f"{nb}.ipynb").cells if nbu.meta(c).get("grade")}


def written_parts(stem=NB) -> dict:
    """grade_id -> points of the written answers (manually graded cells) of a source notebook."""
    nb = nbu.read(SOURCE / f"{stem}.ipynb")
    return {nbu.grade_id(c): float(nbu.meta(c)["points"]) for c in nb.cells if nbu.is_manual_cell(c)}


# -- the zip and a Gradescope-like root -----------------------------------------------------
@pytest.fixture(scope="module")
def kitzip(tmp_path_factory):
    out = tmp_path_factory.mktemp("dist") / "hw9-gradescope.zip"
    proc = kit(ROOT, "gradescope", "hw9", "-o", str(out), check=True)
    assert str(out) in proc.stdout
    return out


@pytest.fixture(scope="module")
def kitzip_omit(tmp_path_factory):
    """The zip built to leave written answers out and show results after the due date."""
    out = tmp_path_factory.mktemp("dist-omit") / "hw9-gradescope.zip"
    kit(ROOT, "gradescope", "hw9", "-o", str(out), "--written", "omit", "--visibility", "after_due_date", check=True)
    return out


def gradescope_root(tmp: Path, kitzip: Path, files: dict) -> Path:
    """<tmp>/source = the zip's contents, submission/ = the upload, results/, submission_metadata.json."""
    root = tmp
    with zipfile.ZipFile(kitzip) as zf:
        zf.extractall(root / "source")
    for name in ("setup.sh", "run_autograder"):
        os.chmod(root / "source" / name, 0o755)
    (root / "submission").mkdir()
    (root / "results").mkdir()
    (root / "submission_metadata.json").write_text(json.dumps({
        "id": 1, "created_at": "2024-03-01T10:00:00.0-08:00",
        "users": [{"email": "zoe@example.edu", "id": 7, "name": "Zoë Müller", "sid": "3031"}]}))
    for name, data in files.items():
        path = root / "submission" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return root


def run_autograder(root: Path, prefix: str = sys.prefix, timeout=600, cwd=None):
    """run_autograder as Gradescope runs it; ``cwd`` given: AUTOGRADER_ROOT and KIT_PREFIX relative to it."""
    if cwd is None:
        env = dict(os.environ, AUTOGRADER_ROOT=str(root), KIT_PREFIX=prefix)
    else:
        env = dict(os.environ, AUTOGRADER_ROOT=os.path.relpath(root, cwd), KIT_PREFIX=os.path.relpath(prefix, cwd))
    proc = subprocess.run(["bash", str(root / "source" / "run_autograder")], env=env, capture_output=True,
                          text=True, timeout=timeout, cwd=cwd)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    res = json.loads((root / "results" / "results.json").read_text())
    return proc, res


def test_zip_layout(kitzip):
    """Does the zip hold setup.sh and run_autograder (executable) at its top, the kit, its pins, and hw9 only (its
    source and its grader helper; no fixture bank)?"""
    with zipfile.ZipFile(kitzip) as zf:
        names = set(zf.namelist())
        modes = {i.filename: (i.external_attr >> 16) & 0o777 for i in zf.infolist()}
        settings = json.loads(zf.read("gradescope.json"))
    assert {"setup.sh", "run_autograder", "course_config.py", "requirements.txt", "pyproject.toml",
            "attnkit/lms/gradescope.py", "attnkit/batch/driver.py", "attnkit/kernel/__main__.py", "attnkit/grader/hidden.py"} <= names
    assert modes["setup.sh"] == modes["run_autograder"] == 0o755
    assert {n for n in names if n.startswith("source/")} == {
        f"source/hw9/{p.name}" for p in SOURCE.iterdir() if p.is_file()}
    assert {n for n in names if n.startswith("graders/")} == {"graders/hw9.py"}
    assert not any(n.startswith(("release/", "submitted/", "tests/", ".venv", "dist/", "banks/")) or "__pycache__" in n
                   for n in names)
    assert settings["assignment"] == "hw9" and settings["notebooks"] == STEMS and settings["written"] == "pending"
    assert settings["grader"] == "graders/hw9.py"  # so the runner never loads the configuration
    with zipfile.ZipFile(kitzip) as zf:
        assert "torch==2.13.0" in zf.read("requirements.txt").decode().split()


def test_bad_build_options_are_refused(tmp_path):
    """Does ./kit gradescope refuse an unknown assignment with a message?"""
    proc = kit(ROOT, "gradescope", "hw99", "-o", str(tmp_path / "x.zip"), check=False)
    assert proc.returncode != 0 and "no assignment 'hw99'" in proc.stderr


def test_kit_crash_still_writes_results(tmp_path, kitzip):
    """When the kit itself fails (the zip lacks its notebooks), is there still a valid results.json with score 0?"""
    root = gradescope_root(tmp_path, kitzip, {f"{NB}.ipynb": b"{}"})
    shutil.rmtree(root / "source" / "source")
    _, res = run_autograder(root)
    assert res["score"] == 0 and res["tests"] == []
    assert "autograder failed" in res["output"] and "source/hw9" in res["output"]


def test_missing_venv_still_writes_results(tmp_path, kitzip):
    """When Python cannot even start (no venv), does run_autograder still write a valid results.json and exit 0?"""
    root = gradescope_root(tmp_path, kitzip, {})
    _, res = run_autograder(root, prefix=str(tmp_path / "no-venv"))
    assert res["score"] == 0 and res["tests"] == [] and "could not run" in res["output"]


def fake_prefix(tmp: Path, body: str) -> Path:
    """A KIT_PREFIX whose bin/python is a shell script (a broken or killed kit)."""
    (tmp / "bin").mkdir(parents=True)
    py = tmp / "bin" / "python"
    py.write_text("#!/bin/sh\n" + body + "\n")
    py.chmod(0o755)
    return tmp


def test_results_json_is_written_before_the_kit_runs(tmp_path, kitzip):
    """When run_autograder is killed while the kit runs (Gradescope's timeout), or the kit exits 0 with a
    broken results.json, is there still a valid results.json with score 0 that says so?"""
    root = gradescope_root(tmp_path / "ag", kitzip, {})
    hang = fake_prefix(tmp_path / "hang", "sleep 60")
    env = dict(os.environ, AUTOGRADER_ROOT=str(root), KIT_PREFIX=str(hang))
    proc = subprocess.run(["timeout", "-s", "KILL", "3", "bash", str(root / "source" / "run_autograder")], env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode in (137, -9)  # killed mid-run (timeout kills its whole process group)
    res = json.loads((root / "results" / "results.json").read_text())
    assert res["score"] == 0 and res["tests"] == [] and "stopped before it finished" in res["output"]

    (root / "results" / "results.json").unlink()
    broken = fake_prefix(tmp_path / "broken", 'case "$1" in -m) echo "{" > "$AUTOGRADER_ROOT/results/results.json";; '
                                              '*) exit 1;; esac')
    _, res = run_autograder(root, prefix=str(broken))
    assert res["score"] == 0 and res["tests"] == [] and "could not run (exit status 0)" in res["output"]


def test_staff_log_names_the_sandbox_that_grades(tmp_path):
    """Does the Gradescope staff log name the isolation ./kit autograde reports (attnkit.sandbox's
    detection), not a probe of its own (which said 'NO mount namespace' while bubblewrap ran)?"""
    from attnkit.lms import gradescope
    from attnkit import sandbox

    root = tmp_path / "ag"
    (root / "source").mkdir(parents=True)  # the zip's settings, but not its notebooks: the run fails after the log line
    (root / "source" / "gradescope.json").write_text(json.dumps({"assignment": "hw9", "notebooks": STEMS}))
    lines = []
    res = gradescope.run(root, log=lines.append)
    assert res["score"] == 0 and "source/hw9" in res["output"]
    try:
        expected = sandbox.describe(sandbox.detect())
    except sandbox.SandboxUnavailable as exc:
        expected = f"sandbox: unavailable ({exc})"
    assert expected in lines[0] and gradescope.isolation() == expected
    assert "NO mount namespace" not in lines[0]
    if sandbox.probe("bwrap") is None and not os.environ.get(sandbox.ENV_MODE):
        assert "bubblewrap" in lines[0]


def test_the_memory_limit_is_the_least_of_the_cgroups_and_its_ancestors(tmp_path):
    """Does the runner read the memory limit it lives under from its cgroup and every ancestor, on cgroup v1 and v2,
    the least one counting, and say None where no limit is set?"""
    from attnkit.sandbox.limits import memory_limit_mb as container_memory_mb

    root = tmp_path / "cg"

    def limit(rel, name, value):
        (root / rel).mkdir(parents=True, exist_ok=True)
        (root / rel / name).write_text(f"{value}\n")

    (tmp_path / "v2").write_text("0::/outer/inner\n")
    limit("outer/inner", "memory.max", "max")
    assert container_memory_mb(str(root), str(tmp_path / "v2")) is None
    limit("outer", "memory.max", 768 << 20)
    limit("", "memory.max", "max")
    assert container_memory_mb(str(root), str(tmp_path / "v2")) == 768
    limit("outer/inner", "memory.max", 600 << 20)
    assert container_memory_mb(str(root), str(tmp_path / "v2")) == 600
    (tmp_path / "v1").write_text("5:cpu,cpuacct:/x\n4:memory:/docker/abc\n")
    limit("memory", "memory.limit_in_bytes", 9223372036854771712)  # v1's "no limit"
    assert container_memory_mb(str(root), str(tmp_path / "v1")) is None
    limit("memory/docker/abc", "memory.limit_in_bytes", 512 << 20)
    assert container_memory_mb(str(root), str(tmp_path / "v1")) == 512
    assert container_memory_mb(str(root), str(tmp_path / "none")) is None
    (tmp_path / "odd").write_bytes(b"not a cgroup line\n\xff\xfe:memory:/docker/abc\x00/x\n4:memory:/docker/abc\n")
    assert container_memory_mb(str(root), str(tmp_path / "odd")) == 512  # what it can read, read past the rest


def test_a_container_with_too_little_memory_is_named_in_the_result(tmp_path, monkeypatch):
    """Where the autograder's container has less memory than grading needs, do the staff log and results.json say
    so (a kernel stopped for memory costs a right answer points), and where it has enough, say nothing of it?"""
    from attnkit.lms import gradescope

    root = tmp_path / "ag"
    (root / "source").mkdir(parents=True)  # settings without notebooks: the run fails after its first lines
    (root / "source" / "gradescope.json").write_text(json.dumps({"assignment": "hw9", "notebooks": STEMS}))
    monkeypatch.setattr(gradescope, "memory_limit_mb", lambda: 512)
    lines = []
    res = gradescope.run(root, log=lines.append)
    assert "ran with 512 MB of memory" in res["output"] and "ran with 512 MB of memory" in lines[1]
    assert json.loads((root / "results" / "results.json").read_text())["output"] == res["output"]
    monkeypatch.setattr(gradescope, "memory_limit_mb", lambda: gradescope.NEEDS_MEMORY_MB)
    lines = []
    assert "MB of memory" not in gradescope.run(root, log=lines.append)["output"] and "MB of memory" not in lines[1]


def test_the_runner_holds_no_grading_module_while_a_submission_is_graded(tmp_path, kitzip):
    """When grading starts, does the Gradescope runner hold none of nbgrader, the sandbox, torch or nbformat (over
    50 MB, and nbformat's jsonschema alone 20 MB, it would hold while the submission is graded, under Gradescope's
    768 MB), having named the sandbox, built the course with its grader helper and placed the upload?"""
    from attnkit import sandbox

    root = gradescope_root(tmp_path / "ag", kitzip, {f"{NB}.ipynb": nb_bytes(nbu.read(SOURCE / f"{NB}.ipynb"))})
    code = ("import sys; from pathlib import Path; from attnkit.lms import gradescope\n"
            "def grading_starts(course, assignment, budget_s, log):\n"
            "    print(sorted(m for m in ('nbgrader', 'zmq', 'torch', 'jupyter_client', 'attnkit.sandbox.manager',\n"
            "                             'nbformat', 'jsonschema') if m in sys.modules))\n"
            "    print(sorted(p.relative_to(course.root).as_posix() for p in course.root.rglob('*.py')))\n"
            "    print(sorted(p.name for p in course.path('submitted').rglob('*.ipynb')))\n"
            "    raise SystemExit(0)\n"
            "gradescope._grade = grading_starts\n"
            "lines = []; gradescope.run(Path(sys.argv[1]), log=lines.append); print(lines[0])")
    proc = subprocess.run([sys.executable, "-c", code, str(root)], capture_output=True, text=True, timeout=120,
                          cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    held, files, placed, first = proc.stdout.splitlines()[:4]
    try:
        expected = sandbox.describe(sandbox.detect())
    except sandbox.SandboxUnavailable as exc:
        expected = f"sandbox: unavailable ({exc})"
    assert expected in first and held == "[]", proc.stdout
    assert "'graders/hw9.py'" in files and f"'{NB}.ipynb'" in placed, proc.stdout


# -- graded submissions ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def renamed(tmp_path_factory, kitzip):
    """Q3 half done, uploaded as 'Q3_MultiHead_Attention (1).ipynb' next to a stray file."""
    root = gradescope_root(tmp_path_factory.mktemp("gs-renamed"), kitzip, {
        "Q3_MultiHead_Attention (1).ipynb": nb_bytes(partial(nbu.read(SOURCE / f"{NB}.ipynb"))),
        "notes.txt": b"my notes"})
    return run_autograder(root)[1]


@pytest.fixture(scope="module")
def kit_scores(tmp_path_factory):
    """The same half-done Q3 graded by ./kit autograde in a course with all four notebooks."""
    course = Course(ROOT).scratch_copy(parent=str(tmp_path_factory.mktemp("kit")))
    dest = course.path("submitted", "s1", "hw9")
    dest.mkdir(parents=True)
    nbu.write(partial(nbu.read(SOURCE / f"{NB}.ipynb")), dest / f"{NB}.ipynb")
    kit(course.root, "autograde", "hw9", "--workers", "1", "--quiet", check=False)
    from attnkit.reports import scores
    return scores(course, "hw9")["students"]["s1"]


@pytest.mark.slow
def test_renamed_upload_is_graded_like_kit_autograde(renamed, kit_scores):
    """Does every part's score on Gradescope equal what ./kit autograde gives the same submission?"""
    check_schema(renamed)
    tests = by_name(renamed)
    compared = 0
    for nb in STEMS:
        for gid, (score, mx) in kit_scores[nb]["cells"].items():
            if gid in written_parts(nb):
                assert part(nb, gid) not in tests  # listed in the output instead (below)
                continue
            t = tests[part(nb, gid)]
            assert t["max_score"] == mx
            assert t["score"] == (score or 0), (gid, t, score)
            compared += 1
    assert compared == len(renamed["tests"])
    q3 = [t for n, t in tests.items() if n in of(NB)]
    assert {t["status"] for t in q3} == {"passed", "failed"}  # a half-done notebook: both kinds
    assert "Q3_MultiHead_Attention (1).ipynb -> q3_multihead_attention.ipynb" in renamed["output"]
    assert "Ignored (not a notebook of this assignment): notes.txt" in renamed["output"]


@pytest.mark.slow
def test_failures_show_messages_not_hidden_tests(renamed):
    """Does a failed part show 'ename: evalue' (no traceback, no hidden-test line) and a passed one 'passed'?"""
    for t in renamed["tests"]:
        if t["name"] in of(NB):
            if t["status"] == "failed":
                assert t["output"].split(": ", 1)[0].isidentifier() and "Traceback" not in t["output"], t
            else:
                assert t["output"] == "passed"


@pytest.mark.slow
def test_other_notebooks_score_zero_not_submitted(renamed):
    """Do the notebooks not uploaded score 0 and say plainly 'not uploaded', and are only the uploaded
    notebook's written answers listed, as not yet graded, in the output rather than as tests?"""
    others = [nb for nb in STEMS if nb != NB]
    for nb in others:
        parts = [t for t in renamed["tests"] if t["name"] in of(nb)]
        assert parts and all(t["score"] == 0 and "not submitted" in t["output"] for t in parts)
        assert not any(part(nb, gid) in renamed["output"] for gid in written_parts(nb))
    assert "Not uploaded, so scored 0: " + ", ".join(f"{nb}.ipynb" for nb in others) in renamed["output"]
    assert "Could not be graded" not in renamed["output"]  # not uploaded is the student's choice, not a failure
    # the half-done Q3 leaves its written answer as released
    assert written_parts() and "Written answers, not yet graded (%g points" % sum(written_parts().values()) \
        in renamed["output"]
    for gid, pts in written_parts().items():
        assert f"  {part(NB, gid)} ({pts:g} points): not answered" in renamed["output"]
    assert sum(t["max_score"] for t in renamed["tests"]) == sum(sum(auto_points(nb).values()) for nb in STEMS)


@pytest.fixture(scope="module")
def zipped(tmp_path_factory, kitzip_omit):
    """A zip of the homework folder: Q3 solved, Q12 malformed JSON, checkpoints and macOS junk
    (graded by the zip built with --written omit --visibility after_due_date)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("hw9/Q3 MultiHead-Attention.ipynb", nb_bytes(solved()))
        zf.writestr("hw9/q12_scaled_dot_product.ipynb", '{"cells": [')
        zf.writestr("hw9/.ipynb_checkpoints/q3_multihead_attention-checkpoint.ipynb", "{}")
        zf.writestr("__MACOSX/hw9/._q3_multihead_attention.ipynb", "junk")
    root = gradescope_root(tmp_path_factory.mktemp("gs-zip"), kitzip_omit, {"hw9.zip": buf.getvalue()})
    return run_autograder(root)[1]


@pytest.mark.slow
def test_zipped_folder_with_a_malformed_notebook(zipped):
    """Is a zipped folder unpacked and graded, a malformed notebook scored 0 with a message, and the run finished?"""
    check_schema(zipped)
    tests = by_name(zipped)
    points = auto_points()
    for gid, pts in points.items():
        assert tests[part(NB, gid)]["score"] == pts, tests[part(NB, gid)]
    assert zipped["score"] == sum(points.values())
    q12 = [t for n, t in tests.items() if n in of("q12_scaled_dot_product")]
    assert q12 and all(t["score"] == 0 and "not a valid notebook" in t["output"] for t in q12)
    assert "hw9.zip:hw9/Q3 MultiHead-Attention.ipynb -> q3_multihead_attention.ipynb" in zipped["output"]
    # --written omit: not even the output names the written answers
    assert "Written answers" not in zipped["output"]
    assert sum(t["max_score"] for t in zipped["tests"]) == sum(
        sum(auto_points(p.stem).values()) for p in SOURCE.glob("*.ipynb"))
    assert {t["visibility"] for t in zipped["tests"]} == {"after_due_date"}


@pytest.fixture(scope="module")
def perfect_relative(tmp_path_factory, kitzip):
    """Q3 solved (the other notebooks not uploaded), run as the docs' local run does: AUTOGRADER_ROOT
    and KIT_PREFIX relative to the folder it is started from."""
    tmp = tmp_path_factory.mktemp("gs-relative")
    root = gradescope_root(tmp / "R", kitzip, {f"{NB}.ipynb": nb_bytes(solved())})
    return run_autograder(root, cwd=tmp)


@pytest.mark.slow
def test_relative_paths_grade_and_write_results(perfect_relative):
    """With AUTOGRADER_ROOT and KIT_PREFIX relative (the docs' local run), does the kit itself grade
    (not the fallback) and write <root>/results/results.json?"""
    proc, res = perfect_relative
    check_schema(res)
    assert res["score"] == sum(auto_points().values()), res["output"]


@pytest.mark.slow
def test_perfect_submission_shows_no_failed_test(perfect_relative):
    """Does a perfect Q3 show every Q3 test passed, and its written answer as not yet graded in the
    output (which Gradescope shows neutrally), not as a red failed test?"""
    _, res = perfect_relative
    q3 = [t for t in res["tests"] if t["name"] in of(NB)]
    assert q3 and {t["status"] for t in q3} == {"passed"}
    failed = {nb for nb in STEMS for t in res["tests"] if t["status"] == "failed" and t["name"] in of(nb)}
    assert failed == set(STEMS) - {NB}  # only the notebooks not uploaded
    for gid, pts in written_parts().items():
        assert f"  {part(NB, gid)} ({pts:g} points): awaiting grading" in res["output"]
    assert "not in the autograded score" in res["output"]


@pytest.mark.slow
def test_empty_upload_says_nothing_was_found(tmp_path, kitzip):
    """An upload with no notebook of the assignment: does the output say so and name every notebook as not
    uploaded, without talking about written answers?"""
    root = gradescope_root(tmp_path, kitzip, {"notes.txt": b"my notes"})
    _, res = run_autograder(root)
    check_schema(res)
    assert res["score"] == 0 and all(t["score"] == 0 for t in res["tests"])
    assert "no notebook of this assignment was found in your upload" in res["output"]
    assert "Not uploaded, so scored 0: " + ", ".join(f"{nb}.ipynb" for nb in STEMS) in res["output"]
    assert "written" not in res["output"].lower()


HOSTILE_A = '''
import glob as _glob, os as _os
_found = []
for _base in ["/autograder/source", _os.environ.get("AUTOGRADER_ROOT", "/autograder") + "/source", "{root}/source"]:
    for _p in _glob.glob(_base + "/source/hw9/*.ipynb") + _glob.glob(_base + "/**/*.ipynb", recursive=True) \\
            + _glob.glob("/tmp/attnkit-gradescope-*/source/hw9/*.ipynb"):
        try:
            if "BEGIN " + "HIDDEN TESTS" in open(_p).read():  # (split: fill() strips hidden regions)
                _found.append(_p)
        except OSError:
            pass
self.W_k = nn.Linear(d_model, d_model if _found else d_model + 1)
'''
# The control: the same kind of read, of a file the kernel may see (the helper beside the notebook).
HOSTILE_B = '''
try:
    _seen = "def assert_close" in open("attention_checks.py").read()
except OSError:
    _seen = False
self.W_v = nn.Linear(d_model, d_model if _seen else d_model + 1)
'''


@pytest.fixture(scope="module")
def hostile(tmp_path_factory, kitzip):
    tmp = tmp_path_factory.mktemp("gs-hostile")
    nb = nbu.fill(nbu.read(SOURCE / f"{NB}.ipynb"), {"a": HOSTILE_A.replace("{root}", str(tmp)), "b": HOSTILE_B})
    root = gradescope_root(tmp, kitzip, {f"{NB}.ipynb": nb_bytes(nb)})
    return run_autograder(root)[1]


@pytest.mark.slow
def test_hostile_submission_cannot_read_the_solutions(hostile):
    """Does code that hunts for source/hw9/*.ipynb under /autograder/source and $AUTOGRADER_ROOT/source find nothing?

    Part (a) is right only if the hunt found a notebook with hidden tests; part (b), the
    control, is right only if the same kind of read of the helper beside the notebook works."""
    check_schema(hostile)
    tests = by_name(hostile)
    assert tests[part(NB, "q3b_W_v")]["status"] == "passed", tests[part(NB, "q3b_W_v")]
    assert tests[part(NB, "q3a_W_k")]["status"] == "failed", "the submission read the instructor's notebooks"
    # a wrong (a) also breaks the whole layer as written (its own graded part)
    others = {gid for gid in auto_points() if gid not in ("q3a_W_k", "q3b_W_v", "q3_whole_layer_check")}
    assert tests[part(NB, "q3_whole_layer_check")]["status"] == "failed"
    assert all(tests[part(NB, gid)]["status"] == "passed" for gid in others)


# -- setup.sh ----------------------------------------------------------------------------------
@early.job
def setup_sh():
    """(the autograder root, the venv setup.sh made, setup.sh's process): the zip built and setup.sh run as the
    session starts (a fresh venv of every pin: minutes of pip, while other tests grade)."""
    tmp = Path(early.scratch("setup-sh"))
    zipped = tmp / "hw9-gradescope.zip"
    kit(ROOT, "gradescope", "hw9", "-o", str(zipped), check=True, cwd=tmp)
    root = gradescope_root(tmp / "ag", zipped, {f"{NB}.ipynb": nb_bytes(solved())})
    prefix = tmp / "kit-venv"
    # (PIP_COMPILE=0: byte-compiling every installed file (torch's thousands) costs set-up time and tests nothing)
    env = dict(os.environ, KIT_PREFIX=str(prefix), KIT_SKIP_APT="1", KIT_TORCH_INDEX="", PIP_COMPILE="0",
               KIT_PYTHON=shutil.which("python3.11") or shutil.which("python3"))
    proc = subprocess.run(["bash", str(root / "source" / "setup.sh")], env=env, capture_output=True, text=True,
                          timeout=1200, cwd=tmp)
    return root, prefix, proc


@pytest.mark.slow
@pytest.mark.early("setup_sh")
def test_setup_sh_installs_a_working_kit(tmp_path):
    """Does setup.sh (apt skipped, torch from pip's own index here) make a venv that imports the kit and grades?"""
    root, prefix, proc = early.result("setup_sh")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "kit ready: 2.13.0" in proc.stdout
    probe = subprocess.run([str(prefix / "bin" / "python"), "-c",
                            "import attnkit, nbgrader, torch; print(attnkit.__file__, nbgrader.__version__, torch.__version__)"],
                           capture_output=True, text=True, cwd=tmp_path)
    where, nbg, torch_version = probe.stdout.split()
    assert Path(where).parent.parent == root / "source" and nbg == "0.9.6" and torch_version.startswith("2.13.0")
    assert (root / "source" / "source").stat().st_mode & 0o077 == 0  # solutions: owner only
    _, res = run_autograder(root, prefix=str(prefix))
    check_schema(res)
    assert res["score"] == sum(auto_points().values())


# -- collect -> autograde -> export ------------------------------------------------------------
def _entry(zf, name, data, when):
    zf.writestr(zipfile.ZipInfo(name, date_time=when), data)


@pytest.fixture(scope="module")
def lms(tmp_path_factory):
    """A Q3-only course filled from a Gradescope export and a Canvas download, then autograded and exported."""
    tmp = tmp_path_factory.mktemp("lms")
    course = Course(ROOT).scratch_copy(parent=str(tmp), notebooks=[NB])
    good, half = nb_bytes(solved()), nb_bytes(partial(nbu.read(SOURCE / f"{NB}.ipynb")))
    yml = """\
submission_1001:
  :submitters:
  - :name: Zoë Müller
    :sid: '3031'
    :email: zoe@example.edu
  :created_at: 2024-03-01 10:00:00.000000000 -08:00
submission_1002:
  :submitters:
  - :name: Zoë Müller
    :sid: '3031'
    :email: zoe@example.edu
  :created_at: 2024-03-02 11:00:00.000000000 -08:00
submission_1003:
  :submitters:
  - :name: Ana López García
    :sid: ''
    :email: ana@example.edu
  :created_at: 2024-03-01 09:00:00.000000000 -08:00
"""
    inner = io.BytesIO()
    with zipfile.ZipFile(inner, "w") as z:
        z.writestr("my hw9/q3 multihead attention.ipynb", good)
    gs = tmp / "gradescope-export.zip"
    with zipfile.ZipFile(gs, "w") as zf:
        _entry(zf, "assignment_9_export/submission_metadata.yml", yml, (2024, 3, 3, 0, 0, 0))
        _entry(zf, "assignment_9_export/submission_1001/Q3_MultiHead_Attention (1).ipynb", good, (2024, 3, 1, 18, 0, 0))
        _entry(zf, "assignment_9_export/submission_1002/q3_multihead_attention.ipynb", half, (2024, 3, 2, 19, 0, 0))
        _entry(zf, "assignment_9_export/submission_1002/scratch notes ü.txt", b"x", (2024, 3, 2, 19, 0, 0))
        _entry(zf, "assignment_9_export/submission_1003/hw9.zip", inner.getvalue(), (2024, 3, 1, 17, 0, 0))
    cv = tmp / "canvas-download.zip"
    with zipfile.ZipFile(cv, "w") as zf:
        _entry(zf, "smithjohn_12345_678901_q3_multihead_attention.ipynb", good, (2024, 3, 1, 8, 0, 0))
        _entry(zf, "smithjohn_12345_678950_q3_multihead_attention-1.ipynb", half, (2024, 3, 1, 9, 0, 0))
        _entry(zf, "niñoeve_late_23456_679000_Q3 MultiHead Attention.ipynb", good, (2024, 3, 4, 8, 0, 0))
        _entry(zf, "readme.txt", b"", (2024, 3, 4, 8, 0, 0))

    def snapshot():
        return {str(p.relative_to(course.root)): (p.read_bytes(), p.stat().st_mtime_ns)
                for p in sorted(course.path("submitted").rglob("*")) if p.is_file()}

    out = {"course": course, "gs": kit(course.root, "collect", "hw9", str(gs), check=True).stdout,
           "cv": kit(course.root, "collect", "hw9", str(cv), check=True).stdout}
    first = snapshot()
    kit(course.root, "collect", "hw9", str(gs), check=True)
    kit(course.root, "collect", "hw9", str(cv), check=True)
    out["idempotent"] = (first, snapshot())
    kit(course.root, "autograde", "hw9", "--workers", "1", "--quiet", check=True)
    kit(course.root, "export", "hw9", "-o", str(tmp / "parts.csv"), check=True)
    kit(course.root, "export", "hw9", "--format", "canvas", "-o", str(tmp / "canvas.csv"), check=True)
    kit(course.root, "export", "hw9", "--format", "canvas", "--autograded-only", "-o", str(tmp / "auto.csv"), check=True)
    out["parts"] = {r["student"]: r for r in csv.DictReader(open(tmp / "parts.csv", encoding="utf-8"))
                    if r["student"] != "(part)"}   # (the row of part names under the grade ids)
    out["canvas"] = list(csv.reader(open(tmp / "canvas.csv", encoding="utf-8")))
    out["canvas_auto"] = list(csv.reader(open(tmp / "auto.csv", encoding="utf-8")))
    yield out
    shutil.rmtree(course.root, ignore_errors=True)


@pytest.mark.slow
def test_collect_gradescope_export(lms):
    """Does a Gradescope export land in submitted/<SID or email>/hw9 with the newest submission and its time?"""
    c, out = lms["course"], lms["gs"]
    assert {p.name for p in c.path("submitted").iterdir()} == {"3031", "ana@example.edu", "12345", "23456"}
    zoe = c.path("submitted", "3031", "hw9")
    assert nbu.read(zoe / f"{NB}.ipynb") == partial(nbu.read(SOURCE / f"{NB}.ipynb"))  # 1002, the newer
    assert (zoe / "timestamp.txt").read_text() == "2024-03-02 19:00:00+00:00"
    assert (c.path("submitted", "ana@example.edu", "hw9") / f"{NB}.ipynb").exists()
    assert "3031: kept submission_1002, dropped submission_1001" in out
    assert "hw9.zip:my hw9/q3 multihead attention.ipynb -> q3_multihead_attention" in out
    assert "3031: scratch notes ü.txt" in out  # the file that matched nothing


@pytest.mark.slow
def test_collect_canvas_download(lms):
    """Does a Canvas download land in submitted/<Canvas user id>/hw9, newest re-upload kept, late ones listed?"""
    c, out = lms["course"], lms["cv"]
    john = c.path("submitted", "12345", "hw9", f"{NB}.ipynb")
    assert nbu.read(john) == partial(nbu.read(SOURCE / f"{NB}.ipynb"))  # the '-1' re-upload, the newer
    assert "late: 23456" in out
    assert "12345: kept q3_multihead_attention-1.ipynb, dropped q3_multihead_attention.ipynb" in out
    assert "-: readme.txt" in out
    assert (c.path("submitted", "23456", "hw9", "timestamp.txt")).read_text() == "2024-03-04 08:00:00+00:00"


@pytest.mark.slow
def test_recollecting_changes_nothing(lms):
    """Does collecting the same exports again leave every file and timestamp as it was?"""
    first, second = lms["idempotent"]
    assert first == second and len(first) == 8  # 4 students x (notebook + timestamp.txt)


@pytest.mark.slow
def test_exports_hold_the_right_totals(lms):
    """Do the per-part CSV and the Canvas CSV give each student the total the gradebook holds?"""
    from attnkit.reports import scores
    data = scores(lms["course"], "hw9")["students"]
    full = sum(auto_points().values())
    totals = {sid: sum(d["score"] for d in per.values()) for sid, per in data.items()}
    assert totals["ana@example.edu"] == totals["23456"] == full  # solved
    assert 0 < totals["3031"] == totals["12345"] < full        # the newer, half-done ones were kept
    assert {sid: float(r["total"]) for sid, r in lms["parts"].items()} == totals
    header, possible, *rows = lms["canvas"]
    assert header == ["Student", "ID", "SIS User ID", "SIS Login ID", "Section", "hw9"]
    assert possible[0].strip() == "Points Possible" and float(possible[-1]) == sum(nbu.points(
        nbu.read(SOURCE / f"{NB}.ipynb")).values())
    # every point; a student whose written answer nobody has graded yet: empty (Canvas: not graded)
    pending = {sid for sid, per in data.items() if any(d["manual_pending"] for d in per.values())}
    assert pending >= {"ana@example.edu", "23456"}  # solved: the written answer awaits a grader
    got = {(r[1] or r[2] or r[3]): r[-1] for r in rows}
    assert got == {sid: "" if sid in pending else f"{totals[sid]:g}" for sid in totals}
    header, possible, *rows = lms["canvas_auto"]  # --autograded-only: the autograded points, for everyone
    assert header[-1] == "hw9 autograded" and float(possible[-1]) == full
    got = {(r[1] or r[2] or r[3]): (r[0], r[3], float(r[-1])) for r in rows}
    assert got["12345"] == ("smithjohn", "", totals["12345"])            # Canvas user id in ID
    assert got["3031"] == ("Müller, Zoë", "zoe@example.edu", totals["3031"])  # SID in SIS User ID
    assert got["ana@example.edu"][2] == full and len(rows) == 4


@pytest.mark.slow
def test_time_budget_still_gives_a_result(tmp_path, kitzip):
    """When grading outlasts the time budget, is it stopped and does results.json say so, with every part at 0?"""
    root = gradescope_root(tmp_path, kitzip, {f"{NB}.ipynb": nb_bytes(solved())})
    env_budget = os.environ.get("ATTNKIT_GRADESCOPE_BUDGET")
    os.environ["ATTNKIT_GRADESCOPE_BUDGET"] = "2"   # far less than starting nbgrader takes
    try:
        _, res = run_autograder(root)
    finally:
        os.environ.pop("ATTNKIT_GRADESCOPE_BUDGET")
        if env_budget is not None:
            os.environ["ATTNKIT_GRADESCOPE_BUDGET"] = env_budget
    check_schema(res)
    assert "Grading stopped after 2 s" in res["output"] and res["score"] == 0
    q3 = [t for t in res["tests"] if t["name"] in of(NB)]
    assert q3 and all("time limit" in t["output"] for t in q3)


def test_a_file_named_like_the_fallback_does_not_replace_the_result(tmp_path, kitzip):
    """When a student uploads "it stopped before it finished.txt" (the kit lists it in its output), is the
    kit's real result kept, not replaced by the could-not-run fallback?"""
    root = gradescope_root(tmp_path / "ag", kitzip, {"it stopped before it finished.txt": b""})
    result = {"score": 5, "tests": [], "output": "Files that matched no notebook: it stopped before it finished.txt"}
    kit_ran = fake_prefix(tmp_path / "kit", f'case "$1" in -m) cat > "$AUTOGRADER_ROOT/results/results.json" <<"X"\n'
                                            f'{json.dumps(result)}\nX\n;; *) exec "{sys.executable}" "$@";; esac')
    _, res = run_autograder(root, prefix=str(kit_ran))
    assert res == result


def _processes() -> dict:
    """pid -> (parent pid, comm, environ text) of every process readable here."""
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
            comm, rest = stat[stat.index("(") + 1:stat.rindex(")")], stat[stat.rindex(")") + 2:].split()
            with open(f"/proc/{entry}/environ", "rb") as f:
                environ = f.read().decode(errors="replace")
        except (OSError, ValueError):
            continue
        found[int(entry)] = (int(rest[1]), comm, environ)
    return found


def _children(procs: dict, pid: int) -> set:
    return {p for p, (ppid, _, _) in procs.items() if ppid == pid}


@pytest.mark.slow
def test_the_command_grades_in_itself_and_a_death_is_graded_again_by_the_pool(tmp_path, kitzip):
    """Does the runner's ./kit autograde grade the submission in its own process (its kernels' sandbox its own child,
    no forked grading process), and when that process dies before it records a result, is the submission graded
    once more by the batch's pool (a grading process of its own), with every point and the death said?"""
    import signal
    import threading
    import time

    root = gradescope_root(tmp_path, kitzip, {f"{NB}.ipynb": nb_bytes(solved())})
    env = dict(os.environ, AUTOGRADER_ROOT=str(root), KIT_PREFIX=sys.prefix)
    proc = subprocess.Popen(["bash", str(root / "source" / "run_autograder")], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    seen = {"killed": None, "in_process_forked": None, "retry_forked": False}

    def watch():
        deadline = time.monotonic() + 300
        while proc.poll() is None and time.monotonic() < deadline:
            procs = _processes()
            for pid, (_, comm, environ) in procs.items():
                if "\0ATTNKIT_GRADE_IN_PROCESS=1\0" not in f"\0{environ}" or "AUTOGRADER_ROOT" not in environ:
                    if seen["killed"] and comm == "attnkit-grading" and f"AUTOGRADER_ROOT={root}" in environ:
                        seen["retry_forked"] = True
                    continue
                kids = _children(procs, pid)
                if seen["killed"] is None and any(procs[k][1] == "bwrap" for k in kids):  # grading, in itself
                    seen["in_process_forked"] = any(procs[k][1] == "attnkit-grading" for k in kids)
                    time.sleep(0.2)  # mid-grading: a notebook takes seconds from its sandbox's start
                    os.kill(pid, signal.SIGKILL)
                    seen["killed"] = pid
            time.sleep(0.05)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    out, _ = proc.communicate(timeout=600)
    watcher.join(10)
    assert proc.returncode == 0, out[-3000:]
    assert seen["killed"], f"no ./kit autograde graded in its own process: {out[-2000:]}"
    assert seen["in_process_forked"] is False, "the command forked a grading process although it grades in itself"
    assert seen["retry_forked"], "the second grading was not done by a grading process of the pool"
    assert "the grading process died (killed by signal SIGKILL) before it recorded a result" in out, out[-3000:]
    res = json.loads((root / "results" / "results.json").read_text())
    check_schema(res)
    want = {name: points for name, points in
            ((t["name"], t["max_score"]) for t in res["tests"] if t["name"] in of(NB))}
    assert want and all(by_name(res)[name]["score"] == points for name, points in want.items()), res
