"""The run folder of one Slurm grading job (slurm/<assignment>-<time>/ under the course), its settings and its shards."""
from __future__ import annotations

import json
import math
import os
import socket

from pathlib import Path
from attnkit.course import Course

RUNS = "slurm"                # under the course root
MAX_RESULT_BYTES = 4 << 20    # one student's result.json (scores, comments, messages)
POLL = float(os.environ.get("ATTNKIT_SLURM_POLL", "5"))
ACTIVE = {"PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "SUSPENDED", "REQUEUED", "RESIZING", "STAGE_OUT",
          "SIGNALING", "REQUEUE_HOLD", "REQUEUE_FED", "RESV_DEL_HOLD", "STOPPED"}


class SlurmError(RuntimeError):
    """sbatch or squeue missing or refusing: the message says what to do."""


# ------------------------------------------------------------------------------------------ course settings
def require_gpu(course: Course) -> bool:
    """course_config.py ``c.Cluster.require_gpu = True``: the hidden tests must run on CUDA, never CPU only."""
    config = course.config()
    return bool(config.Cluster.get("require_gpu", False)) if "Cluster" in config else False


def has_cuda() -> bool:
    try:
        import torch

        return bool(torch.cuda.is_available())
    except Exception:  # no torch, a broken driver: the CUDA cases cannot run here
        return False


def devices_here() -> list[str]:
    """What attnkit.grader.checks.devices() returns in a grading process on this node."""
    return ["cpu"] + (["cuda"] if has_cuda() else [])


def gpu_refusal(course: Course, gpus: int | None = None) -> str:
    """Why this course may not be graded here, or ''. ``gpus``: the GPUs each Slurm task asks for."""
    if not require_gpu(course):
        return ""
    if gpus is not None:
        return "" if gpus > 0 else ("this course grades on a GPU (course_config.py: c.Cluster.require_gpu = True): "
                                    "pass --gpus-per-task 1")
    if not has_cuda():
        return (f"this course grades on a GPU (course_config.py: c.Cluster.require_gpu = True) and "
                f"{socket.gethostname()} has none that torch can use")
    return ""


# ------------------------------------------------------------------------------------------------ the run
class Run:
    """One cluster batch: ``RUN/run.json`` (assignment, students, options, the jobs of each round)."""

    def __init__(self, folder: Path, data: dict | None = None):
        self.dir = Path(folder)
        self.data = data if data is not None else json.loads((self.dir / "run.json").read_text())

    @property
    def course(self) -> Course:
        return Course(self.dir.parents[1])

    def save(self) -> None:
        tmp = self.dir / "run.json.part"
        tmp.write_text(json.dumps(self.data, indent=1))
        tmp.replace(self.dir / "run.json")

    def result_dir(self, student: str) -> Path:
        return self.dir / "results" / student

    def graded(self) -> set[str]:
        return {s for s in self.data["students"] if (self.result_dir(s) / "result.json").is_file()}

    def jobs(self) -> list[str]:
        return [r["job"] for r in self.data["rounds"]]


def _runs(course: Course) -> Path:
    return course.path(RUNS)


def find_run(course: Course, job: str) -> Run | None:
    index = _runs(course) / "jobs" / str(job)
    if not index.is_file():
        return None
    return Run(_runs(course) / index.read_text().strip())


def open_run(course: Course, assignment: str, students: list[str]) -> Run | None:
    """The unfinished run of this assignment over these students (a rerun of the same command resumes it)."""
    base = _runs(course)
    for folder in sorted(base.glob(f"{assignment}-*"), reverse=True) if base.is_dir() else []:
        try:
            run = Run(folder)
        except (OSError, ValueError):
            continue
        if run.data["assignment"] == assignment and not run.data.get("finished") and run.data["rounds"] \
                and sorted(run.data["students"]) == sorted(students):  # no round: no job was ever submitted
            return run
    return None


def shards(students: list[str], tasks: int) -> list[list[str]]:
    """``tasks`` (at most one per student) contiguous shards of near-equal size; a student is in exactly one."""
    n = max(1, min(tasks, len(students)))
    size = math.ceil(len(students) / n)
    return [students[i:i + size] for i in range(0, len(students), size)]
