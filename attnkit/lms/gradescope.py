"""The Gradescope autograder: ``./kit gradescope`` builds it, ``run_autograder`` runs it.

Gradescope unpacks the zip into ``/autograder/source``, runs ``setup.sh`` once (image build),
then, in a fresh container per submission, ``run_autograder``, which calls
``python -m attnkit.lms.gradescope run``. That builds a course folder in the temp dir (outside
``/autograder/submission``) from the zip's ``source/<assignment>`` and the student's matched
uploads, grades it with ``./kit autograde`` (the kit's one grading path: same hidden tests,
sandbox and messages) and turns the gradebook into ``/autograder/results/results.json``.

``<root>`` is ``/autograder`` unless ``AUTOGRADER_ROOT`` names another folder.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
import zipfile
from pathlib import Path

import attnkit
from attnkit.sandbox import seccomp
from attnkit.sandbox.limits import memory_limit_mb
from attnkit.course import CONFIG_FILE, Course
from attnkit.package import kit_dir, pins_text

SETTINGS = "gradescope.json"
STUDENT = "gradescope-submission"
WRITTEN_CHOICES = ("pending", "omit")
VISIBILITIES = ("visible", "hidden", "after_due_date", "after_published")
# Gradescope's default timeout is 600 s; stop grading early enough to still write results.
DEFAULT_BUDGET_S = 480
# The least memory one submission grades in with every point (benchmarks/gradescope_limits.py, 2026-12-07, kernels
# started cold as they are in a container this small: under a 600 MB limit, page cache evicted first, a solved
# submission and one with a quadratic Q6 kept every point; under 560 MB the quadratic one's kernel was stopped for
# memory): a container with less gets a note for the staff in its result
NEEDS_MEMORY_MB = 600

SETUP_SH = r"""#!/usr/bin/env bash
# Gradescope runs this once, as root, while it builds the autograder image (Ubuntu).
#   KIT_PREFIX=DIR       where the virtual environment goes (default <root>/kit-venv)
#   KIT_SKIP_APT=1       skip apt-get (not root, or no network; Python 3.11+ must be there already)
#   KIT_PYTHON=EXE       the Python that makes the venv (default python3.11, else python3)
#   KIT_TORCH_INDEX=URL  where torch comes from (default PyTorch's CPU wheels: PyPI's torch pulls
#                        several GB of CUDA); empty = pip's own configuration
set -euo pipefail
SRC="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="${AUTOGRADER_ROOT:-$(dirname "$SRC")}"
PREFIX="${KIT_PREFIX:-$ROOT/kit-venv}"
if [ "${KIT_SKIP_APT:-0}" != 1 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  # bubblewrap: the grading kernel's sandbox; util-linux: setpriv, taskset
  apt-get install -y -q --no-install-recommends bubblewrap util-linux ca-certificates
  apt-get install -y -q --no-install-recommends python3.11 python3.11-venv \
    || apt-get install -y -q --no-install-recommends python3 python3-venv
fi
PY="${KIT_PYTHON:-$(command -v python3.11 || command -v python3)}"
"$PY" -m venv "$PREFIX"
pip=("$PREFIX/bin/python" -m pip install -q --disable-pip-version-check)
torch_pin="$(grep -E '^torch==' "$SRC/requirements.txt")"
if [ -n "${KIT_TORCH_INDEX-https://download.pytorch.org/whl/cpu}" ]; then
  "${pip[@]}" --index-url "${KIT_TORCH_INDEX-https://download.pytorch.org/whl/cpu}" "$torch_pin"
fi
"${pip[@]}" -r "$SRC/requirements.txt"
# The kit runs from this folder (no build step): a .pth file puts it on the venv's path.
"$PREFIX/bin/python" - "$SRC" <<'EOF'
import pathlib, sys, sysconfig
pathlib.Path(sysconfig.get_paths()["purelib"], "attnkit-autograder.pth").write_text(sys.argv[1] + "\n")
EOF
# Solutions and hidden tests: readable by the grader (root) only; the kernel's sandbox hides them too.
chmod -R go-rwx "$SRC/source"
if [ -d "$SRC/graders" ]; then chmod -R go-rwx "$SRC/graders"; fi
chmod 755 "$SRC/run_autograder" "$SRC/setup.sh"
"$PREFIX/bin/python" -c "import attnkit.lms.gradescope, nbgrader, torch; print('kit ready:', torch.__version__)"
"""

RUN_AUTOGRADER = r"""#!/usr/bin/env bash
# Gradescope runs this once per submission; it always leaves <root>/results/results.json.
SRC="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="${AUTOGRADER_ROOT:-/autograder}"
PREFIX="${KIT_PREFIX:-$ROOT/kit-venv}"
# Absolute paths before anything changes directory (a local run may pass relative ones).
case "$ROOT" in /*) ;; *) ROOT="$PWD/$ROOT" ;; esac
case "$PREFIX" in /*) ;; *) PREFIX="$PWD/$PREFIX" ;; esac
RESULTS="$ROOT/results/results.json"
STOPPED="it stopped before it finished"
fallback() {  # a valid result, written first: the kit replaces it (atomically) when it finishes
  mkdir -p "$ROOT/results"
  cat > "$RESULTS" <<EOF
{"score": 0, "execution_time": 0, "tests": [], "stdout_visibility": "hidden",
 "output": "The autograder could not run ($1), so this submission was not graded. This is not your fault: please tell the course staff."}
EOF
}
fallback "$STOPPED"
export PATH="$PREFIX/bin:$PATH"
export PYTHONPATH="$SRC${PYTHONPATH:+:$PYTHONPATH}"
cd "$ROOT" || cd /
"$PREFIX/bin/python" -m attnkit.lms.gradescope run --root "$ROOT"
rc=$?
# Valid, and not the fallback (its output's start compared: the kit's output holds file names students chose).
valid() { "$PREFIX/bin/python" -c 'import json, sys; r = json.load(open(sys.argv[1])); assert "score" in r
assert not str(r.get("output", "")).startswith("The autograder could not run (" + sys.argv[2] + "),")' "$RESULTS" "$STOPPED"; }
if ! valid 2>/dev/null; then
  # Python itself failed (no venv, a broken install) before writing a valid result: say how.
  fallback "exit status $rc"
fi
exit 0
"""


# -- building the zip -------------------------------------------------------------------
def build(course: Course, assignment: str, out: Path | None = None, written: str = "pending",
          visibility: str = "visible") -> Path:
    """``dist/<assignment>-gradescope.zip``: setup.sh and run_autograder at the top, the kit,
    its configuration and pins, and this assignment's source notebooks and helper files only."""
    if written not in WRITTEN_CHOICES:
        raise ValueError(f"--written must be one of {', '.join(WRITTEN_CHOICES)}")
    if visibility not in VISIBILITIES:
        raise ValueError(f"--visibility must be one of {', '.join(VISIBILITIES)}")
    src = course.path("source", assignment)
    notebooks = course.notebooks(assignment)
    if not notebooks:
        raise ValueError(f"source/{assignment} holds no notebooks")
    out = Path(out or course.path("dist", f"{assignment}-gradescope.zip"))
    out.parent.mkdir(parents=True, exist_ok=True)
    grader = course.grader_file(assignment)  # the assignment's grader helper, where the configuration names it
    grader = grader if grader is not None and grader.is_file() else None
    # the runner reads the helper's place here: loading the configuration would import nbgrader (50 MB) into a
    # process that holds its memory while the submission is graded
    settings = {"assignment": assignment, "notebooks": notebooks, "written": written, "visibility": visibility,
                "kit_version": attnkit.__version__,
                "grader": grader.relative_to(course.root).as_posix() if grader is not None else None}
    files: list[tuple[str, Path | str, int]] = [
        ("setup.sh", SETUP_SH, 0o755), ("run_autograder", RUN_AUTOGRADER, 0o755),
        (SETTINGS, json.dumps(settings, indent=1) + "\n", 0o644),
        (CONFIG_FILE, course.path(CONFIG_FILE), 0o644),
    ]
    # the course's pins, or (a course folder without them) those the installed kit declares
    files.append(("requirements.txt", course.path("requirements.txt") if course.path("requirements.txt").is_file()
                  else pins_text(), 0o644))
    if course.path("pyproject.toml").is_file():
        files.append(("pyproject.toml", course.path("pyproject.toml"), 0o644))
    kit = kit_dir()  # the kit's modules and subpackages (the grader process's among them), no fixture banks
    files += [(f"attnkit/{p.relative_to(kit).as_posix()}", p, 0o644) for p in sorted(kit.rglob("*.py"))
              if "fixtures" not in p.relative_to(kit).parts and "__pycache__" not in p.parts]
    for p in sorted(src.rglob("*")):
        rel = p.relative_to(src)
        if p.is_file() and not {"__pycache__", ".ipynb_checkpoints"} & set(rel.parts):
            files.append((f"source/{assignment}/{rel.as_posix()}", p, 0o644))
    if grader is not None:
        files.append((grader.relative_to(course.root).as_posix(), grader, 0o644))
    tmp = out.with_suffix(".tmp")
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, content, mode in files:
            info = zipfile.ZipInfo(name, date_time=(2020, 1, 1, 0, 0, 0))  # same bytes on every build
            info.external_attr = (0o100000 | mode) << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            data = content.encode() if isinstance(content, str) else content.read_bytes()
            zf.writestr(info, data)
    tmp.replace(out)
    return out


# -- running on Gradescope --------------------------------------------------------------
def _secret_lines(course: Course, assignment: str) -> list[str]:
    from attnkit.authoring import notebooks as nbu

    lines = nbu.assignment_hidden_lines(sorted(course.path("source", assignment).glob("*.ipynb")))
    return sorted(set(lines), key=len, reverse=True)


def _redact(obj, secret: list[str]):
    """Every hidden-test or mark-scheme line in any text becomes '[hidden test]' (as feedback does)."""
    if isinstance(obj, str):
        for line in secret:
            obj = obj.replace(line, "[hidden test]")
        return obj
    if isinstance(obj, list):
        return [_redact(x, secret) for x in obj]
    if isinstance(obj, dict):
        return {k: _redact(v, secret) for k, v in obj.items()}
    return obj


def isolation() -> str:
    """The kernel isolation that applies here, in the words ``./kit autograde`` prints: the
    sandbox's own detection (attnkit.sandbox), which the grading below uses too."""
    from attnkit import sandbox

    try:
        return sandbox.describe(sandbox.detect())
    except sandbox.SandboxUnavailable as exc:
        return f"sandbox: unavailable ({exc})"


def isolation_apart() -> str:
    """isolation(), worked out in a fork of this process: the sandbox's modules (nbgrader, jupyter_client: 55 MB)
    stay out of the runner, which holds its memory while the submission is graded (Gradescope's 768 MB)."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # no thread runs in this process yet: the fork is safe
        try:
            os.close(read_fd)
            os.write(write_fd, isolation().encode()[:4000])
        finally:
            os._exit(0)
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as said:
        line = said.read().decode(errors="replace")
    os.waitpid(pid, 0)
    return line or "sandbox: not known (its detection failed)"


def memory_note(limit_mb: int | None) -> str:
    """For the staff, where the container has less memory than grading needs (else nothing)."""
    if limit_mb is None or limit_mb >= NEEDS_MEMORY_MB:
        return ""
    return (f"Note for the course staff: this autograder ran with {limit_mb} MB of memory; grading a submission needs "
            f"about {NEEDS_MEMORY_MB} MB (Gradescope's default 768 MB is enough; 1.0 GB leaves room). With less, a "
            "kernel can be stopped for memory and a right answer lose points: raise the autograder's memory.")


def _course_for(root: Path, settings: dict) -> Course:
    """A course folder in the temp dir: the zip's configuration and source notebooks, only
    readable by the grader. Its name (attnkit-*) puts its source/ on the kernel's hidden list."""
    src = root / "source"
    assignment = settings["assignment"]
    if not (src / "source" / assignment).is_dir():
        raise FileNotFoundError(f"the autograder zip lacks source/{assignment}/ (rebuild it with ./kit gradescope)")
    folder = Path(tempfile.mkdtemp(prefix="attnkit-gradescope-"))
    os.chmod(folder, 0o700)
    shutil.copy2(src / CONFIG_FILE, folder / CONFIG_FILE)
    shutil.copytree(src / "source" / assignment, folder / "source" / assignment,
                    ignore=shutil.ignore_patterns("__pycache__", ".ipynb_checkpoints"))
    rel = settings.get("grader")  # the zip's own kit wrote it (see build)
    if rel:
        grader = (src / rel).resolve()
        if not grader.is_relative_to(src.resolve()) or not grader.is_file():
            raise FileNotFoundError(f"the autograder zip lacks its grader helper {rel} (rebuild it with ./kit gradescope)")
        dest = folder / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(grader, dest)
    return Course(folder)


def _grade(course: Course, assignment: str, budget_s: float, log) -> bool:
    """``./kit autograde`` on the one submission, in its own process group so that a
    submission that would outlast Gradescope's timeout is stopped. True if it finished.

    This process supervises it as the batch's pool supervises a grading process: the command grades the
    submission in its own process (no forked grading process: 40-60 MB less, so warm kernels fit Gradescope's
    768 MB), this budget is its time limit, and if it dies before it records a result (killed, out of memory, a
    crash) the submission is graded once more by the batch's own pool, a grading process of its own."""
    from attnkit.batch.results import load_report
    from attnkit.batch.workers import IN_PROCESS_ENV

    deadline = time.monotonic() + budget_s
    for in_process in (True, False):
        env = {k: v for k, v in os.environ.items() if k != IN_PROCESS_ENV}
        if in_process:
            env[IN_PROCESS_ENV] = "1"
        finished, rc = _autograde(course, assignment, deadline - time.monotonic(), log, env)
        if not (finished and in_process and rc) or STUDENT in load_report(course.root, assignment):
            return finished
        how = f"exit status {rc}"
        if rc < 0:
            try:
                how = f"killed by signal {signal.Signals(-rc).name}"
            except ValueError:  # a real-time signal has no name
                how = f"killed by signal {-rc}"
        log(f"the grading process died ({how}) before it recorded a result: graded once more, in a grading process "
            "of its own")
    return finished


def _autograde(course: Course, assignment: str, budget_s: float, log, env: dict) -> tuple[bool, int]:
    """(finished within ``budget_s``, its exit status) of ``./kit autograde`` on the one submission."""
    cmd = [sys.executable, "-m", "attnkit", "--root", str(course.root), "autograde", assignment,
           "--student", STUDENT, "--workers", "1", "--quiet"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
                            env=env)
    try:
        out, _ = proc.communicate(timeout=max(budget_s, 1.0))
        log(out)
        return True, proc.returncode
    except subprocess.TimeoutExpired:
        import psutil

        # kernels run in sessions of their own (jupyter_client), so the group kill alone misses them
        try:
            tree = psutil.Process(proc.pid).children(recursive=True)
        except psutil.Error:
            tree = []
        os.killpg(proc.pid, signal.SIGKILL)
        for child in tree:
            try:
                child.kill()
            except psutil.Error:
                pass
        out, _ = proc.communicate()
        log(out or "")
        return False, proc.returncode


def results_for(course: Course, assignment: str, settings: dict, matching, finished: bool) -> dict:
    """Gradescope's results: one test per graded part, in notebook order."""
    from attnkit.authoring import notebooks as nbu
    from attnkit.reports import failures, scores
    from attnkit.batch.results import load_report
    from attnkit.student.selfcheck import unanswered

    mine = load_report(course.root, assignment).get(STUDENT)
    report = {n.notebook: n for n in (mine.notebooks if mine else [])}
    try:
        graded = scores(course, assignment)["students"].get(STUDENT, {})
    except Exception:
        if finished:
            raise
        graded = {}  # stopped before the assignment reached the gradebook
    visibility = settings.get("visibility", "visible")
    tests, problems, missing, written = [], [], [], []
    auto_score = auto_max = 0.0
    for notebook in settings["notebooks"]:
        source_nb = nbu.read(course.path("source", assignment, f"{notebook}.ipynb"))
        autograded = course.path("autograded", STUDENT, assignment, f"{notebook}.ipynb")
        test_ids = {nbu.grade_id(c) for c in source_nb.cells if nbu.is_test_cell(c)}
        labels = nbu.part_labels(source_nb)
        cells = graded.get(notebook, {}).get("cells", {})
        # Without autograde's report (it was stopped), a notebook counts as graded only if every test cell got a score.
        done = autograded.exists() and all(cells.get(gid, (None,))[0] is not None for gid in test_ids)
        status = str(report[notebook].status) if notebook in report else ("graded" if done else "unfinished")
        message = report[notebook].message if notebook in report else ""
        if status == "unfinished":
            message = ("not graded: grading stopped before this notebook finished (time limit); scored 0"
                       if not finished else "not graded (the grader recorded no result); scored 0")
        if status == "missing":
            missing.append(f"{notebook}.ipynb")
        elif status != "graded":
            problems.append(f"{notebook}.ipynb: {message}")
        student_nb = nbu.read(autograded) if status == "graded" and autograded.exists() else None
        fails = failures(student_nb) if student_nb is not None else {}
        answers = {nbu.grade_id(c): c for c in (student_nb.cells if student_nb is not None else [])}
        for cell in source_nb.cells:
            gid = nbu.grade_id(cell)
            if not nbu.meta(cell).get("grade"):
                continue
            points = float(nbu.meta(cell).get("points", 0))
            name = labels.get(gid) or f"{notebook}: {gid}"  # as the homework names the part
            if nbu.is_manual_cell(cell):
                # Not a test: Gradescope shows every test as passed (green) or failed (red), one
                # without a score as failed too; a written answer is neither yet (see _written_lines).
                if status == "graded":
                    empty = gid not in answers or unanswered(answers[gid])
                    written.append((name, points, "not answered" if empty else "awaiting grading"))
                continue
            score = float(cells.get(gid, (0, points))[0] or 0) if status == "graded" else 0.0
            auto_score += score
            auto_max += points
            if status != "graded":
                output = message
            elif gid in fails:
                output = fails[gid]
            else:
                output = "passed" if score >= points else f"partial credit {score:g}/{points:g}"
            tests.append({"name": name, "score": score, "max_score": points,
                          "status": "passed" if score >= points else "failed",
                          "output": output, "visibility": visibility})
    lines = [f"Autograded score: {auto_score:g} / {auto_max:g} points."]
    if settings.get("written", "pending") == "pending" and written:
        lines += _written_lines(written)
    lines.append("Files: " + ("; ".join(f"{up.name} -> {stem}.ipynb" for stem, up in sorted(matching.chosen.items()))
                              or "no notebook of this assignment was found in your upload"))
    if matching.unmatched:
        lines.append("Ignored (not a notebook of this assignment): " + ", ".join(matching.unmatched))
    for stem, kept, dropped in matching.duplicates:
        lines.append(f"Two files for {stem}.ipynb: graded {kept}, ignored {', '.join(dropped)}")
    lines += matching.problems
    if missing:
        lines.append("Not uploaded, so scored 0: " + ", ".join(missing))
    if problems:
        lines.append("Could not be graded (scored 0): " + " | ".join(problems))
    return {"score": auto_score, "output": "\n".join(lines), "tests": tests, "stdout_visibility": "hidden"}


def _written_lines(written) -> list[str]:
    """The written answers of the notebooks that were graded: in the submission's output text,
    which Gradescope shows neutrally, with their points (not in the autograded score)."""
    total = sum(p for _, p, _ in written)
    return [f"Written answers, not yet graded ({total:g} points, graded by hand by the course staff; not in the "
            "autograded score):"] + [f"  {name} ({points:g} points): {state}" for name, points, state in written]


def run(root: Path, budget_s: float | None = None, log=print) -> dict:
    """Grade ``<root>/submission`` and write ``<root>/results/results.json``, whatever happens."""
    from attnkit.lms.matching import match_uploads, place, uploads_in

    t0 = time.time()
    root = Path(root).resolve()
    budget_s = budget_s or float(os.environ.get("ATTNKIT_GRADESCOPE_BUDGET", DEFAULT_BUDGET_S))
    course = assignment = None
    too_little = memory_note(memory_limit_mb())
    try:
        settings = json.loads((root / "source" / SETTINGS).read_text())
        assignment = settings["assignment"]
        # the container's own syscall profile: what is relied on where the kit's filter is off
        log(f"attnkit {attnkit.__version__} grading {assignment}; {isolation_apart()}; {seccomp.container_filter()}")
        if too_little:
            log(too_little)
        course = _course_for(root, settings)
        submission = root / "submission"
        if not submission.is_dir():
            raise FileNotFoundError(f"no submission folder {submission}")
        matching = match_uploads(uploads_in(submission), settings["notebooks"])
        place(matching, course.path("submitted", STUDENT, assignment))
        finished = _grade(course, assignment, budget_s - (time.time() - t0), log)
        result = results_for(course, assignment, settings, matching, finished)
        if not finished:
            result["output"] += f"\nGrading stopped after {budget_s:.0f} s (time limit); unfinished parts score 0."
    except BaseException as exc:  # noqa: BLE001 - whatever breaks, Gradescope still gets a result
        log(traceback.format_exc())
        result = _failed(exc)
    # the lines to hide are read only now: reading the notebooks takes nbformat (34 MB) into this process, which
    # would hold it while the submission is graded within Gradescope's memory
    secret = []
    if course is not None:
        try:
            secret = _secret_lines(course, assignment)
        except BaseException:  # noqa: BLE001 - nothing to redact with: no grading output leaves
            log(traceback.format_exc())
            result = _failed(RuntimeError("the assignment's notebooks in the zip could not be read"))
    if too_little:
        result["output"] = f"{result.get('output') or ''}\n{too_little}".lstrip("\n")
    result["execution_time"] = round(time.time() - t0, 1)
    result = _redact(result, secret)
    out = root / "results" / "results.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=1, ensure_ascii=False))
    tmp.replace(out)
    if course is not None and not os.environ.get("ATTNKIT_KEEP_COURSE"):
        shutil.rmtree(course.root, ignore_errors=True)
    return result


def _failed(exc: BaseException) -> dict:
    """Gradescope's result where the autograder itself failed: no score, nothing of the grading shown."""
    return {"score": 0.0, "tests": [], "stdout_visibility": "hidden",
            "output": f"The autograder failed ({type(exc).__name__}: {str(exc)[:300]}), so this submission "
                      "was not graded. This is not your fault: please tell the course staff."}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m attnkit.lms.gradescope")
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="grade <root>/submission into <root>/results/results.json")
    r.add_argument("--root", default=os.environ.get("AUTOGRADER_ROOT", "/autograder"))
    args = p.parse_args(argv)
    run(Path(args.root))
    return 0


if __name__ == "__main__":
    sys.exit(main())
