"""Grading on Slurm (attnkit/slurm/): shards, the faithful scratch copy, the merge's validation, the GPU-only
refusal, and a real single-node Slurm (Debian's slurm-wlm and munge, brought up by the fixture) that grades the
demo's samples and a hostile submission with the same per-part scores as the local batch, resubmits a killed
task's students, and scores 0 with the reason a student whose task died twice."""
from __future__ import annotations

import contextlib
import csv
import json
import os
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from attnkit import slurm
from attnkit.course import Course
from harness import kit

ROOT = Path(__file__).resolve().parents[1]
ASSIGNMENT = "hw9"


def test_every_student_is_in_exactly_one_shard():
    """Are the students split into at most ``tasks`` shards, each student in exactly one, none empty?"""
    students = [f"s{i:02d}" for i in range(11)]
    for tasks in (1, 2, 3, 4, 11, 50):
        groups = slurm.shards(students, tasks)
        assert len(groups) <= tasks and all(groups)
        assert sorted(s for g in groups for s in g) == students


def test_array_ranges_expand():
    """Does a compressed array range from scontrol ('0-2,5%2') expand to its task indices?"""
    assert slurm._expand("0-2,5%2") == [0, 1, 2, 5]
    assert slurm._expand("3") == [3]


def test_scratch_copy_keeps_links_fifos_and_big_files_as_they_are(tmp_path):
    """Does the node-local copy of a submission keep a symlink a symlink (never followed), a FIFO a FIFO, and a
    file over the size cap a file of that size without reading it, so grading refuses each the same way?"""
    from attnkit.batch.student import MAX_FILE_BYTES, submission_problems

    secret = tmp_path / "instructor.ipynb"
    secret.write_text("SECRET")
    src = tmp_path / "submitted" / "alice" / "hw"
    src.mkdir(parents=True)
    (src / "q1.ipynb").write_text("{}")
    (src / "link.ipynb").symlink_to(secret)
    os.mkfifo(src / "pipe")
    with open(src / "huge.bin", "wb") as f:
        f.truncate(MAX_FILE_BYTES + 1)
    dest = tmp_path / "scratch" / "submitted" / "alice" / "hw"
    slurm.copy_submission(src, dest)
    assert (dest / "q1.ipynb").read_text() == "{}"
    assert os.readlink(dest / "link.ipynb") == str(secret)
    assert (dest / "pipe").is_fifo()
    assert (dest / "huge.bin").stat().st_size == MAX_FILE_BYTES + 1
    assert submission_problems(dest) == submission_problems(src)


def _small_course(tmp_path) -> Course:
    from harness import small_assignment

    root = tmp_path / "course"
    (root / "source" / "hw").mkdir(parents=True)
    shutil.copy2(ROOT / "course_config.py", root / "course_config.py")
    course = Course(root)
    with course.gradebook() as gb:
        small_assignment(gb)
    return course


def _run_with(course: Course, student: str, data: dict) -> slurm.Run:
    folder = course.path("slurm", "hw-test")
    (folder / "results" / student).mkdir(parents=True)
    (folder / "run.json").write_text(json.dumps({"assignment": "hw", "students": [student], "options": {},
                                                 "rounds": []}))
    (folder / "results" / student / "result.json").write_text(json.dumps(data))
    return slurm.Run(folder)


def _result(student, auto_a):
    return {"student": student, "devices": ["cpu"], "node": "n1", "task": "7_0",
            "result": {"student": student, "assignment": "hw", "seconds": 1.0,
                       "notebooks": [{"notebook": "q1_first", "status": "graded", "message": "", "seconds": 1.0}]},
            "gradebook": {"timestamp": None, "notebooks": {"q1_first": {
                "flagged": False, "late_submission_penalty": None,
                "grades": {"t_a": {"auto_score": auto_a, "manual_score": None, "extra_credit": None,
                                   "needs_manual_grade": False},
                           "t_b": {"auto_score": 3.0, "manual_score": None, "extra_credit": None,
                                   "needs_manual_grade": False}},
                "comments": {}}}}}


def test_merge_writes_scores_and_refuses_a_score_above_the_maximum(tmp_path):
    """Does a task's result merge into the gradebook as it was graded, and is a result claiming more than a
    part's maximum refused (nothing written, the student listed as could not be graded)?"""
    from attnkit.reports import scores
    from attnkit.batch.results import load_report

    course = _small_course(tmp_path)
    run = _run_with(course, "alice", _result("alice", 2.0))
    assert slurm.merge(run) == ["alice"]
    assert scores(course, "hw")["students"]["alice"]["q1_first"]["cells"]["t_a"] == (2.0, 2.0)
    assert slurm.merge(run) == []  # merged once: nothing new

    run = _run_with(course, "mallory", _result("mallory", 200.0))
    slurm.merge(run)
    assert "mallory" not in scores(course, "hw")["students"]
    note = load_report(course.root, "hw")["mallory"].notebooks[0].message
    assert note.startswith("could not be graded: its cluster result was unreadable")


def test_a_gpu_only_course_refuses_to_grade_without_a_gpu(tmp_path):
    """With c.Cluster.require_gpu, does --on slurm without --gpus-per-task refuse before submitting anything
    (exit 2, the setting named), and the local batch too on this machine without CUDA?"""
    course = _small_course(tmp_path)
    with open(course.path("course_config.py"), "a") as f:
        f.write("\nc.Cluster.require_gpu = True\n")
    (course.path("submitted", "alice", "hw")).mkdir(parents=True)
    proc = kit(course.root, "autograde", "hw", "--on", "slurm")
    assert proc.returncode == 2 and "c.Cluster.require_gpu = True" in proc.stderr, proc.stderr
    assert not course.path("slurm").exists()
    if not slurm.has_cuda():
        proc = kit(course.root, "autograde", "hw", "--unsandboxed-i-accept-the-risk")
        assert proc.returncode == 2 and "has none that torch can use" in proc.stderr, proc.stderr


# ---------------------------------------------------------------------------------------- a real Slurm
CELL_TIMEOUT = {"ATTNKIT_CELL_TIMEOUT": "20"}  # every batch compared below grades with the same per-cell timeout


@pytest.fixture(scope="module")
def cluster():
    from attnkit.fixtures import slurm_cluster

    why = slurm_cluster.why_not()
    if why:
        pytest.skip(why)
    slurm_cluster.install()
    with slurm_cluster.Cluster(gpu=True) as c:  # a GPU Slurm schedules and torch cannot see
        yield c


def _copy(course: Course, dest: Path) -> Course:
    shutil.copytree(course.root, dest, symlinks=True)
    return Course(dest)


@pytest.fixture(scope="module")
def samples(tmp_path_factory):
    """One course (Q3 only) with the demo's three samples and one hostile submission: a copy no one grades (each
    way of grading below grades a copy of it), the copy the local batch graded, and the students."""
    from attnkit.fixtures.grade import submission_for
    from banks.attacks.hostile import HOSTILE
    from banks.attacks.tamper import Q3
    from attnkit.authoring.notebooks import write
    from attnkit.authoring.release import generate
    from attnkit.authoring.samples import place

    pristine = Course(ROOT).scratch_copy(notebooks=[Q3], parent=str(tmp_path_factory.mktemp("slurm")))
    generate(pristine, ASSIGNMENT)
    students = place(pristine, ASSIGNMENT)
    hostile = next(f for f in HOSTILE if f.student == "hostile-gradebook-write")
    dest = pristine.path("submitted", hostile.student, ASSIGNMENT)
    dest.mkdir(parents=True)
    write(submission_for(hostile, pristine), dest / f"{hostile.notebook}.ipynb")
    local = _copy(pristine, pristine.root.parent / "local")
    kit(local.root, "autograde", ASSIGNMENT, "--workers", "2", env=CELL_TIMEOUT, check=True)
    return pristine, local, students + [hostile.student]


def _parts(course: Course) -> list[dict]:
    out = course.path("grades.csv")
    kit(course.root, "export", ASSIGNMENT, "-o", str(out), check=True)
    with open(out) as f:
        return list(csv.DictReader(f))


def _statuses(course: Course) -> dict:
    data = json.loads(course.path("reports", f"{ASSIGNMENT}-autograde.json").read_text())
    return {d["student"]: [(n["notebook"], n["status"], n["message"]) for n in d["notebooks"]] for d in data}


@pytest.mark.slow
def test_slurm_batch_scores_equal_the_local_batch_and_a_killed_task_is_resubmitted(cluster, samples,
                                                                                    tmp_path_factory):
    """Graded through a real single-node Slurm (2 array tasks, one killed while grading), does every student
    get exactly the local batch's per-part scores, statuses and messages, after one resubmission, and does the
    report say per student that the CUDA cases were skipped on this node without a GPU?"""
    pristine, local, students = samples
    remote = _copy(pristine, tmp_path_factory.mktemp("cluster") / "course")
    env = {**cluster.env, **CELL_TIMEOUT, "ATTNKIT_SLURM_POLL": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "attnkit", "--root", str(remote.root), "autograde", ASSIGNMENT,
                             "--on", "slurm", "--tasks", "2"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env={**os.environ, **env})
    killed, killed_of, run = None, None, None
    end = time.monotonic() + 600
    while killed is None and time.monotonic() < end and proc.poll() is None:
        runs = list(remote.path("slurm").glob(f"{ASSIGNMENT}-*/run.json")) if remote.path("slurm").is_dir() else []
        run = slurm.Run(runs[0].parent) if runs else None
        if run is not None and run.data["rounds"]:
            first, second = run.data["rounds"][0]["shards"][1]
            if (run.result_dir(first) / "result.json").is_file():  # task 1 graded one student of two: kill it
                killed, killed_of = f"{run.jobs()[0]}_1", second
                subprocess.run(["scancel", killed], env=cluster.env, check=True)
        time.sleep(0.2)
    out, _ = proc.communicate(timeout=900)
    assert killed, out + cluster.logs()
    assert proc.returncode == 0, out[-4000:] + cluster.logs()
    assert f"Slurm task {killed} was cancelled" in out and "resubmitting them once" in out, out
    run = slurm.Run(run.dir)
    assert run.data["rounds"][1]["shards"] == [[second]]  # only the student it had not finished
    if not slurm.has_cuda():
        for s in students:
            assert f"  {s}: q3_multihead_attention ran on cpu (no GPU on the node: CUDA cases skipped)" in out, out
    assert _parts(remote) == _parts(local)
    assert _statuses(remote) == _statuses(local)
    assert sorted(_statuses(remote)) == sorted(students)
    left = [p for p in Path(slurm._scratch_base()).glob("attnkit-slurm-task-*")
            if (p / "submitted" / killed_of).exists()]
    assert not left, left  # the killed task removed its node-local copy (SIGTERM before SIGKILL)
    for s in students:  # the feedback's input, as locally
        assert sorted(p.name for p in remote.path("autograded", s, ASSIGNMENT).glob("*.ipynb")) == \
            sorted(p.name for p in local.path("autograded", s, ASSIGNMENT).glob("*.ipynb"))


def _run_autograder(root: Path, zipped: Path, upload: Path) -> dict:
    """Gradescope's run for one submission: the zip unpacked in <root>/source, the upload's files in
    <root>/submission, run_autograder as Gradescope runs it (tests/test_gradescope.py); its results.json."""
    import zipfile

    with zipfile.ZipFile(zipped) as zf:
        zf.extractall(root / "source")
    (root / "results").mkdir()
    shutil.copytree(upload, root / "submission")
    (root / "submission_metadata.json").write_text(json.dumps({
        "id": 1, "created_at": "2024-03-01T10:00:00.0-08:00", "users": [{"name": "A Student", "sid": "1"}]}))
    env = {**os.environ, **CELL_TIMEOUT, "AUTOGRADER_ROOT": str(root), "KIT_PREFIX": sys.prefix}
    proc = subprocess.run(["bash", str(root / "source" / "run_autograder")], env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads((root / "results" / "results.json").read_text())


@pytest.mark.slow
def test_gradescope_gives_every_part_the_local_batchs_score(samples, tmp_path):
    """The same course's Gradescope autograder (./kit gradescope, run_autograder as Gradescope runs it, one
    submission each), does it give each of the demo's samples and the hostile submission exactly the local
    batch's score and maximum in every autograded part (the Slurm batch equals the local one, above)?"""
    from concurrent.futures import ThreadPoolExecutor

    from attnkit.authoring import notebooks as nbu
    from attnkit.reports import scores

    pristine, local, students = samples
    zipped = tmp_path / f"{ASSIGNMENT}-gradescope.zip"
    kit(pristine.root, "gradescope", ASSIGNMENT, "-o", str(zipped), check=True)
    with ThreadPoolExecutor(2) as pool:  # two submissions at a time, as the local batch's two workers
        got = dict(zip(students, pool.map(
            lambda s: _run_autograder(tmp_path / s, zipped, pristine.path("submitted", s, ASSIGNMENT)), students)))
    want = scores(local, ASSIGNMENT)["students"]
    for s in students:
        tests = {t["name"]: t for t in got[s]["tests"]}
        names = []
        for stem in pristine.notebooks(ASSIGNMENT):
            nb = nbu.read(pristine.path("source", ASSIGNMENT, f"{stem}.ipynb"))
            labels = nbu.part_labels(nb)
            for gid in (nbu.grade_id(c) for c in nb.cells if nbu.is_test_cell(c)):
                score, most = want[s][stem]["cells"][gid]
                name = nbu.part_label(labels, gid)
                names.append(name)
                assert (tests[name]["score"], tests[name]["max_score"]) == ((score or 0), most), (s, name)
        assert sorted(tests) == sorted(names), s  # no part more on Gradescope, none fewer
        assert got[s]["score"] == pytest.approx(sum(t["score"] for t in tests.values()))
    assert any(t["score"] for t in got["sample-solution"]["tests"])  # not all zeros: something was graded


@pytest.mark.slow
def test_a_student_whose_task_dies_twice_is_scored_zero_with_the_reason(cluster, tmp_path):
    """If the task holding a student is cancelled, and so is its resubmission, is the student scored 0,
    "could not be graded: <the task's reason> (tried 2 times)", and does --no-wait then --collect finish it?"""
    from attnkit.reports import scores

    base = Course(ROOT).scratch_copy(notebooks=["q12_scaled_dot_product"], parent=str(tmp_path))
    from attnkit.authoring.release import generate

    generate(base, ASSIGNMENT)
    dest = base.path("submitted", "doomed", ASSIGNMENT)
    dest.mkdir(parents=True)
    shutil.copy2(base.path("release", ASSIGNMENT, "q12_scaled_dot_product.ipynb"), dest)
    env = {**cluster.env, "ATTNKIT_SLURM_POLL": "1"}
    # hold the job so that it is cancelled before it starts, both times
    proc = kit(base.root, "autograde", ASSIGNMENT, "--on", "slurm", "--no-wait",
               env={**env, "SBATCH_HOLD": "1"}, check=True)
    job = proc.stdout.strip().splitlines()[-1]
    subprocess.run(["scancel", job], env=cluster.env, check=True)
    collect = subprocess.Popen([sys.executable, "-m", "attnkit", "--root", str(base.root), "autograde",
                                "--collect", job], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               env={**os.environ, **env, "SBATCH_HOLD": "1"})
    index = base.path("slurm", "jobs")
    end = time.monotonic() + 120
    while len(list(index.iterdir())) < 2 and time.monotonic() < end:
        time.sleep(0.3)
    second = str(max(int(p.name) for p in index.iterdir()))
    subprocess.run(["scancel", second], env=cluster.env, check=True)
    out, _ = collect.communicate(timeout=300)
    assert collect.returncode == 1, out
    note = _statuses(base)["doomed"][0][2]
    assert note.startswith(f"could not be graded: Slurm task {second}_0 was cancelled"), out
    assert note.endswith("(tried 2 times); scored 0"), note
    assert scores(base, ASSIGNMENT)["students"]["doomed"]["q12_scaled_dot_product"]["score"] == 0


def test_a_node_that_cannot_sandbox_refuses_its_shard_and_says_what_it_lacks(tmp_path):
    """Run as Slurm would on a node where no sandbox works, does a task grade nothing, exit 2, and leave the
    reason (user namespaces named) for its students' "could not be graded" line?"""
    from attnkit.sandbox.detection import ENV_MODE

    why = _task_refusal(tmp_path, {"workers": 1}, {ENV_MODE: "none"})
    assert "cannot sandbox the kernels" in why and "user namespaces" in why, why


def _task_refusal(tmp_path, options: dict, env: dict) -> str:
    """Run one array task over one student as Slurm would (no Slurm): it must grade nothing and exit 2; the
    reason its student's "could not be graded" line will give."""
    course = _small_course(tmp_path)
    course.path("submitted", "alice", "hw").mkdir(parents=True)
    folder = course.path("slurm", "hw-test")
    for sub in ("results", "tasks", "out", "shards"):
        (folder / sub).mkdir(parents=True)
    (folder / "run.json").write_text(json.dumps({"assignment": "hw", "students": ["alice"], "options": options,
                                                 "rounds": [{"job": "41", "shards": [["alice"]]}]}))
    (folder / "shards" / "0-0.json").write_text(json.dumps(["alice"]))
    env = {**os.environ, **env, "SLURM_ARRAY_JOB_ID": "41", "SLURM_ARRAY_TASK_ID": "0"}
    proc = subprocess.run([sys.executable, "-m", "attnkit.slurm", "task", str(folder), "0"], capture_output=True,
                          text=True, env=env, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert not any((folder / "results").iterdir())
    return slurm.task_reason(slurm.Run(folder), "41", 0, ("FAILED", "exit code 2:0"))


@pytest.mark.slow
def test_a_task_given_gpus_on_a_node_where_torch_sees_none_refuses_its_shard(tmp_path):
    """A task of a run with --gpus-per-task 1 (a course not GPU-only) on a node where torch sees no GPU, as
    CUDA_VISIBLE_DEVICES from Slurm says there is one: does it grade nothing on the CPU alone, exit 2, and give
    the missing GPU as its students' reason?"""
    if slurm.has_cuda():
        pytest.skip("torch sees a GPU here: the refusal is for a node without one")
    why = _task_refusal(tmp_path, {"workers": 1, "gpus": 1}, {"CUDA_VISIBLE_DEVICES": "0"})
    assert why.startswith("the task asked for a GPU (--gpus-per-task) but torch sees none on "), why


@pytest.mark.slow
def test_ctrl_c_cancels_nothing_and_the_same_command_resumes(cluster, tmp_path):
    """Does Ctrl-C while waiting leave the job running (exit 130, said), and does the same command again pick
    the run up (no second job) and merge the student's grade?"""
    import signal

    from attnkit.authoring.release import generate
    from attnkit.reports import scores

    base = Course(ROOT).scratch_copy(notebooks=["q12_scaled_dot_product"], parent=str(tmp_path))
    generate(base, ASSIGNMENT)
    dest = base.path("submitted", "patient", ASSIGNMENT)
    dest.mkdir(parents=True)
    shutil.copy2(base.path("release", ASSIGNMENT, "q12_scaled_dot_product.ipynb"), dest)
    env = {**os.environ, **cluster.env, "ATTNKIT_SLURM_POLL": "1"}
    argv = [sys.executable, "-m", "attnkit", "--root", str(base.root), "autograde", ASSIGNMENT, "--on", "slurm"]
    # Ctrl-C as at a terminal: a suite started in the background (`cmd &` in a script) ignores SIGINT, and a
    # child keeps an ignored signal ignored
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    index = base.path("slurm", "jobs")
    end = time.monotonic() + 120
    while not (index.is_dir() and any(index.iterdir())) and time.monotonic() < end:
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "nothing was cancelled" in out, out
    again = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=600)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "resuming the unfinished cluster run" in again.stderr
    assert len(list(index.iterdir())) == 1  # the first job finished the work: none submitted again
    assert _statuses(base)["patient"][0][:2] == ("q12_scaled_dot_product", "graded")
    assert "patient" in scores(base, ASSIGNMENT)["students"]


def test_ctrl_c_while_sbatch_submits_records_the_job_before_stopping(tmp_path):
    """A Ctrl-C that lands while sbatch is taking the job (a fake sbatch signals the kit, then answers): is the
    job written to run.json and the jobs index before the kit exits 130 naming it, so the same command resumes
    it instead of losing it; and is a run folder that never got a job not resumed?"""
    import signal

    course = _small_course(tmp_path)
    course.path("submitted", "alice", "hw").mkdir(parents=True)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "sbatch"
    fake.write_text("#!/bin/sh\nkill -INT $PPID\nsleep 1\necho 4242\n")
    fake.chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    proc = subprocess.run([sys.executable, "-m", "attnkit", "--root", str(course.root), "autograde", "hw",
                           "--on", "slurm"], capture_output=True, text=True, env=env, timeout=300,
                          preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    assert proc.returncode == 130, proc.stderr
    assert "nothing was cancelled; job 4242 goes on" in proc.stderr, proc.stderr
    run = slurm.find_run(course, "4242")
    assert run is not None and run.jobs() == ["4242"]
    assert slurm.open_run(course, "hw", ["alice"]).dir == run.dir

    never = course.path("slurm", "hw-19990101-000000-000000")  # written before sbatch took anything
    never.mkdir()
    (never / "run.json").write_text(json.dumps({"assignment": "hw", "students": ["alice"], "options": {},
                                                "rounds": []}))
    shutil.rmtree(run.dir)
    assert slurm.open_run(course, "hw", ["alice"]) is None


# ------------------------------------------------------------------------------------ a GPU, an ordinary user
def _one_student_course(tmp_path, student: str) -> Course:
    from attnkit.authoring.release import generate

    base = Course(ROOT).scratch_copy(notebooks=["q12_scaled_dot_product"], parent=str(tmp_path))
    generate(base, ASSIGNMENT)
    dest = base.path("submitted", student, ASSIGNMENT)
    dest.mkdir(parents=True)
    shutil.copy2(base.path("release", ASSIGNMENT, "q12_scaled_dot_product.ipynb"), dest)
    return base


@pytest.mark.slow
def test_a_gpu_only_course_asks_slurm_for_gpus_and_a_node_where_torch_sees_none_refuses(cluster, tmp_path):
    """A GPU-only course (c.Cluster.require_gpu) graded with --gpus-per-task 1 on a node Slurm gives a GPU that
    torch cannot see: does the array job carry --gres=gpu:1 and get it, and does the task refuse its student
    (not resubmitted: scored 0, the missing GPU named) instead of grading on the CPU only?"""
    from attnkit.reports import scores

    if slurm.has_cuda():
        pytest.skip("torch sees a GPU here: the refusal is for a node without one")
    base = _one_student_course(tmp_path, "gpuless")
    with open(base.path("course_config.py"), "a") as f:
        f.write("\nc.Cluster.require_gpu = True\n")
    env = {**cluster.env, "ATTNKIT_SLURM_POLL": "1"}
    proc = kit(base.root, "autograde", ASSIGNMENT, "--on", "slurm", "--gpus-per-task", "1", env=env, timeout=300)
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    (folder,) = base.path("slurm").glob(f"{ASSIGNMENT}-*")
    run = slurm.Run(folder)
    assert "#SBATCH --gres=gpu:1" in (folder / "round-0.sbatch").read_text().splitlines()
    job = subprocess.run(["scontrol", "-o", "show", "job", run.jobs()[0]], env=cluster.env, capture_output=True,
                         text=True).stdout
    assert "gres/gpu=1" in job or "gres:gpu:1" in job, job  # Slurm gave the task the GPU it asked for
    assert len(run.data["rounds"]) == 1  # a node that refuses is not tried again
    note = _statuses(base)["gpuless"][0][2]
    assert note.startswith("could not be graded: this course grades on a GPU "
                           "(course_config.py: c.Cluster.require_gpu = True) and "), note
    assert "has none that torch can use" in note and note.endswith("(tried 1 time); scored 0"), note
    assert scores(base, ASSIGNMENT)["students"]["gpuless"]["q12_scaled_dot_product"]["score"] == 0


@pytest.fixture(scope="module")
def ordinary_user(cluster):
    """An ordinary user made for the test (useradd, home under /home), removed with its home afterwards."""
    import pwd

    if not shutil.which("useradd") or not shutil.which("runuser"):
        pytest.skip("needs useradd and runuser to make an ordinary user and act as that user")
    name = f"attnkit-sl{os.getpid()}"
    made = subprocess.run(["useradd", "--create-home", "--shell", "/bin/bash", name], capture_output=True,
                          text=True, timeout=60)
    assert made.returncode == 0, made.stderr
    try:
        yield pwd.getpwnam(name)
    finally:
        subprocess.run(["userdel", "--remove", name], capture_output=True, timeout=120)


@contextlib.contextmanager
def _traversable(paths):
    """o+x (to pass through, not to list) on each folder above ``paths`` that lacks it, put back after: on a
    cluster the kit and its Python are on a file system every user reaches; here they may be under /root."""
    changed: dict[Path, int] = {}
    try:
        for p in paths:
            for d in Path(p).resolve().parents:
                mode = stat.S_IMODE(d.stat().st_mode)
                if not mode & stat.S_IXOTH and d not in changed:
                    changed[d] = mode
                    os.chmod(d, mode | stat.S_IXOTH)
        yield
    finally:
        for d, mode in changed.items():
            os.chmod(d, mode)


@pytest.mark.slow
def test_an_ordinary_users_batch_is_sandboxed_and_scored_as_the_local_batch(cluster, samples, ordinary_user):
    """Submitted by an ordinary user, whose tasks Slurm runs as that user (bubblewrap in a user namespace; no
    cgroup of the kernels' own, so the cost meters read /proc behind the kernel's no-process filter), does the
    batch give exactly the local batch's per-part scores, statuses and messages? Where the node gives that user
    no user namespace, is every student refused instead, the user namespaces named?"""
    pristine, local, students = samples
    user, home, uid = ordinary_user.pw_name, Path(ordinary_user.pw_dir), ordinary_user.pw_uid
    # the user's own copy of the kit's package (this checkout's is closed to other users while a fallback kernel
    # could run: sandbox.protect), on the interpreter and packages every user of the cluster reaches
    kit = home / "kit"
    shutil.copytree(ROOT / "attnkit", kit / "attnkit", ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run(["chown", "-R", f"{user}:{user}", str(kit)], check=True, timeout=120)
    env = ["env", "-i", f"HOME={home}", "PATH=/usr/bin:/bin", "LANG=C.UTF-8", f"SLURM_CONF={cluster.env['SLURM_CONF']}",
           *(f"{k}={v}" for k, v in CELL_TIMEOUT.items()), "ATTNKIT_SLURM_POLL=1", f"PYTHONPATH={kit}"]
    with _traversable([os.path.realpath(sys.executable), sys.prefix, sys.base_prefix]):
        reach = subprocess.run(["runuser", "-u", user, "--", *env, sys.executable, "-c",
                                "import attnkit, torch; print(attnkit.__file__)"],
                               capture_output=True, text=True, timeout=120, cwd="/")
        if reach.returncode != 0:
            pytest.skip(f"an ordinary user cannot run this kit's Python ({sys.executable}): "
                        f"{(reach.stderr.strip().splitlines() or ['?'])[-1]}")
        assert reach.stdout.strip() == str(kit / "attnkit" / "__init__.py"), reach.stdout
        _graded_as(user, uid, home, env, cluster, pristine, local, students)


def _graded_as(user, uid, home, env, cluster, pristine, local, students) -> None:
    from attnkit import sandbox

    course = _copy(pristine, home / "course")
    subprocess.run(["chown", "-R", f"{user}:{user}", str(course.root)], check=True, timeout=120)
    proc = subprocess.run(["runuser", "-u", user, "--", *env, sys.executable, "-m", "attnkit", "--root",
                           str(course.root), "autograde", ASSIGNMENT, "--on", "slurm", "--tasks", "2"],
                          capture_output=True, text=True, timeout=900, cwd="/")
    said = proc.stdout[-3000:] + proc.stderr[-3000:]
    (folder,) = course.path("slurm").glob(f"{ASSIGNMENT}-*")
    logs = sorted((folder / "out").glob("*.out"))
    assert logs and all(p.stat().st_uid == uid for p in logs), said  # Slurm ran every task as the user
    text = "\n".join(p.read_text() for p in logs)
    userns = subprocess.run(["runuser", "-u", user, "--", sandbox.BWRAP, "--unshare-user", "--ro-bind", "/", "/",
                             "true"], capture_output=True, timeout=60).returncode == 0
    if not userns:  # the refusal, with what the node lacks
        assert proc.returncode == 1, said
        for s in students:
            note = _statuses(course)[s][0][2]
            assert "cannot sandbox the kernels" in note and "user namespaces" in note, note
        return
    assert proc.returncode == 0, said + text[-3000:]
    assert f"as uid {uid}:" in text and "sandbox: bubblewrap in an unprivileged user namespace" in text, text
    if not os.path.exists("/sys/fs/cgroup/cgroup.controllers"):  # cgroup v1: no cgroup of the user's own
        assert "cost meters: /proc only (no per-kernel cgroup), and the kernel may start threads but no process" \
            in text, text
    assert all(p.stat().st_uid == uid for p in (folder / "results").iterdir())
    assert _parts(course) == _parts(local)
    assert _statuses(course) == _statuses(local)
