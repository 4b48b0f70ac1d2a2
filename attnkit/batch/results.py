"""What grading produces, typed until it is written to JSON: statuses, per-notebook and
per-student results, the report store (reports/<assignment>-autograde.json), and the one
helper that turns an error output into the message students and staff read."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path


class Status(str, Enum):
    """How one notebook of one submission ended (a str, so JSON and old reports compare equal)."""
    GRADED = "graded"          # autograded; scores are in the gradebook
    MISSING = "missing"        # not submitted: scored 0
    MALFORMED = "malformed"    # not a notebook (bad JSON, wrong format): scored 0
    FAILED = "failed"          # could not be graded (grader error, worker died): scored 0

    def __str__(self) -> str:
        return self.value

    @property
    def ok(self) -> bool:
        """Nothing for staff to look at (a missing notebook is the student's choice)."""
        return self in (Status.GRADED, Status.MISSING)


@dataclass
class NotebookResult:
    notebook: str
    status: Status
    message: str = ""
    seconds: float = 0.0

    def to_json(self) -> dict:
        return {"notebook": self.notebook, "status": str(self.status), "message": self.message,
                "seconds": self.seconds}

    @classmethod
    def from_json(cls, d: dict) -> "NotebookResult":
        return cls(d["notebook"], Status(d["status"]), d.get("message", ""), d.get("seconds", 0.0))


@dataclass
class StudentResult:
    student: str
    assignment: str
    notebooks: list[NotebookResult] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return all(n.status.ok for n in self.notebooks)

    def to_json(self) -> dict:
        return {"student": self.student, "assignment": self.assignment,
                "notebooks": [n.to_json() for n in self.notebooks], "seconds": self.seconds}

    def notebook(self, name: str) -> NotebookResult | None:
        return next((n for n in self.notebooks if n.notebook == name), None)

    @classmethod
    def from_json(cls, d: dict) -> "StudentResult":
        return cls(d["student"], d["assignment"], [NotebookResult.from_json(n) for n in d.get("notebooks", [])],
                   d.get("seconds", 0.0))


class Problem(str, Enum):
    """Why feedback for a student or page was not written."""
    NOT_GRADED = "nothing was autograded"      # already reported by autograde: not a new failure
    NBGRADER = "nbgrader could not write feedback"
    LEAK = "the page would show hidden test or mark scheme text"


@dataclass
class FeedbackProblem:
    kind: Problem
    student: str
    notebook: str = ""
    detail: str = ""

    def __str__(self) -> str:
        where = f"{self.student}/{self.notebook}" if self.notebook else self.student
        return f"{where}: {self.kind.value}" + (f" ({self.detail})" if self.detail else "")


def error_message(output) -> str:
    """'ename: evalue' of an error output (a notebook output dict or node)."""
    return f"{output.get('ename', 'Error')}: {output.get('evalue', '')}"


def first_error(cell) -> str | None:
    """The message of a cell's first error output, if it has one."""
    for out in cell.get("outputs", []):
        if out.get("output_type") == "error":
            return error_message(out)
    return None


def report_path(root: Path, assignment: str) -> Path:
    return Path(root) / "reports" / f"{assignment}-autograde.json"


def save_report(root: Path, assignment: str, results: list[StudentResult]) -> Path:
    """Merge these students' results into the report (other students' entries are kept);
    written to a temporary file and renamed, so a killed grader never leaves half a report."""
    path = report_path(root, assignment)
    path.parent.mkdir(parents=True, exist_ok=True)
    merged = {r.student: r.to_json() for r in load_report(root, assignment).values()}
    merged.update({r.student: r.to_json() for r in results})
    tmp = path.with_suffix(".json.part")
    tmp.write_text(json.dumps([merged[k] for k in sorted(merged)], indent=1))
    tmp.replace(path)
    return path


def load_report(root: Path, assignment: str) -> dict[str, StudentResult]:
    path = report_path(root, assignment)
    if not path.exists():
        return {}
    try:
        return {d["student"]: StudentResult.from_json(d) for d in json.loads(path.read_text())}
    except (ValueError, KeyError, TypeError):  # an unreadable old report is replaced, not fatal
        return {}
