"""``kit integrity``: grade every fixture bank in one scratch course and print how fair the grader is.

The banks are the course's: ``BANKS`` in its ``banks/__init__.py`` (attnkit.fixtures). Each fixture is one of

* right  -- a right answer (``default="solution"``, every expected score full): it must get full marks;
* wrong  -- some part is expected to score below full (a realistic mistake, or the untouched
  release): those parts must lose their points;
* tamper -- a bank that says ``KIND = "tamper"``: an attempt to break or fool the grader, which must get
  exactly its expected scores (and grading status).

The report is a confusion table (right answers graded right / wrong; the lowered parts of wrong
answers graded wrong / right) and "tamper cases scored as intended: k/n", followed by every
fixture that did not score exactly as its bank says.
"""
from __future__ import annotations

import os
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from attnkit import fixtures
from attnkit.authoring import notebooks as nbu
from attnkit.course import Course
from attnkit.fixtures import grade



@dataclass
class Case:
    fixture: object
    bank: str          # module name in the course's banks package, e.g. hw1.q1_first
    kind: str          # "right", "wrong" or "tamper"


@dataclass
class Report:
    right_ok: int = 0          # right answers with full marks on every part
    right_bad: int = 0         # right answers that lost points somewhere
    wrong_parts_ok: int = 0    # lowered parts of wrong answers that lost their points
    wrong_parts_bad: int = 0   # lowered parts that kept full marks (the grader was fooled)
    wrong_exact: int = 0       # wrong answers scored exactly as expected on every part
    wrong_total: int = 0
    tamper_ok: int = 0
    tamper_total: int = 0
    problems: list = field(default_factory=list)
    seconds: float = 0.0
    count: int = 0

    def text(self) -> str:
        right_n = self.right_ok + self.right_bad
        parts_n = self.wrong_parts_ok + self.wrong_parts_bad
        w = 34
        lines = [
            f"integrity over {self.count} fixture submissions ({self.seconds:.0f}s)",
            "",
            f"{'':<{w}}{'graded right':>14}{'graded wrong':>14}",
            f"{'right answers (submissions)':<{w}}{self.right_ok:>14}{self.right_bad:>14}",
            f"{'wrong answers (lowered parts)':<{w}}{self.wrong_parts_bad:>14}{self.wrong_parts_ok:>14}",
            "",
            f"right answers graded right: {self.right_ok}/{right_n}",
            f"wrong answers' lowered parts graded wrong: {self.wrong_parts_ok}/{parts_n}",
            f"wrong answers scored exactly as expected (every part): {self.wrong_exact}/{self.wrong_total}",
            f"tamper cases scored as intended: {self.tamper_ok}/{self.tamper_total}",
        ]
        if self.problems:
            lines += ["", "not as expected:"] + [f"  {p}" for p in self.problems]
        return "\n".join(lines)

    @property
    def ok(self) -> bool:
        return not self.problems

    def merged(self, other: "Report") -> "Report":
        """Both reports' counts added (one report per assignment's batch)."""
        counts = {f: getattr(self, f) + getattr(other, f) for f in self.__dataclass_fields__}
        return Report(**counts)


def load_cases(root: Path, banks: list[str] | None = None) -> list[Case]:
    """Every fixture of every bank (the course's BANKS, or those whose names contain one of ``banks``),
    classified."""
    cases, seen, source = [], set(), {}
    course = Course(root)
    for name in fixtures.bank_names(root):
        if banks and not any(b in name for b in banks):
            continue
        tamper = getattr(fixtures.bank_module(name, root), "KIND", "") == "tamper"
        for fx in fixtures.bank(name, root):
            if fx.student in seen:
                raise SystemExit(f"error: student id {fx.student!r} is used by two fixtures")
            seen.add(fx.student)
            fx.assignment = grade.assignment_of([fx], course)
            if tamper:
                kind = "tamper"
            else:
                key = (fx.assignment, fx.notebook)
                if key not in source:
                    source[key] = nbu.read(Path(root) / "source" / fx.assignment / f"{fx.notebook}.ipynb")
                full = {nbu.grade_id(c): float(nbu.meta(c)["points"]) for c in source[key].cells
                        if nbu.is_test_cell(c)}
                lowered = (fx.default != "solution") or any(float(v) < full.get(k, 0) for k, v in fx.expected.items())
                kind = "wrong" if lowered else "right"
            cases.append(Case(fx, name, kind))
    return cases


def evaluate(cases: list[Case], graded, expected_scores) -> Report:
    """Compare the gradebook with what each bank says."""
    rep = Report(count=len(cases))
    for case in cases:
        fx = case.fixture
        want = expected_scores(fx, graded.course)
        cells = graded.scores.get(fx.student, {}).get(fx.notebook, {}).get("cells", {})
        got = {gid: float((cells.get(gid) or (0, 0))[0] or 0) for gid in want}
        full = {gid: float((cells.get(gid) or (0, 0))[1] or 0) for gid in want}
        status = next((str(n.status) for n in getattr(graded.results.get(fx.student), "notebooks", [])
                       if n.notebook == fx.notebook), "no result")
        want_status = fx.status
        exact = got == want and status == want_status
        msgs = graded.messages.get(fx.student, {})
        missing_msgs = [gid for gid, text in fx.messages.items() if text not in msgs.get(gid, "")]
        if case.kind == "right":
            if all(got[g] == full[g] for g in want):
                rep.right_ok += 1
            else:
                rep.right_bad += 1
        elif case.kind == "wrong":
            rep.wrong_total += 1
            rep.wrong_exact += exact
            for gid in want:
                if want[gid] < full[gid]:
                    if got[gid] < full[gid]:
                        rep.wrong_parts_ok += 1
                    else:
                        rep.wrong_parts_bad += 1
        else:
            rep.tamper_total += 1
            rep.tamper_ok += exact and not missing_msgs
        if not exact or missing_msgs:
            diff = ", ".join(f"{g} {got[g]:g} (want {want[g]:g})" for g in want if got[g] != want[g])
            if status != want_status:
                diff = f"status {status} (want {want_status})" + (f"; {diff}" if diff else "")
            if missing_msgs:
                diff += ("; " if diff else "") + "message lacks " + ", ".join(
                    f"{g}: {fx.messages[g]!r}" for g in missing_msgs)
            rep.problems.append(f"[{case.kind}] {fx.student} ({fx.notebook}): {diff}")
    return rep


def run(root: str | os.PathLike | None = None, workers: int = 2, banks: list[str] | None = None,
        keep: bool = False, out=sys.stdout) -> Report:
    course = Course(root)
    cases = load_cases(course.root, banks)
    if not cases:
        raise SystemExit(f"error: no fixture bank matches {banks} "
                         f"(banks: {', '.join(fixtures.bank_names(course.root)) or 'none: no banks/__init__.py'})")
    kinds = {k: sum(c.kind == k for c in cases) for k in ("right", "wrong", "tamper")}
    assignments = sorted({c.fixture.assignment for c in cases})
    notebooks = sorted({c.fixture.notebook for c in cases})
    print(f"grading {len(cases)} fixture submissions ({kinds['right']} right, {kinds['wrong']} wrong, "
          f"{kinds['tamper']} tamper) over {', '.join(notebooks)} with {workers} workers ...", file=out, flush=True)
    t0 = time.perf_counter()
    rep = Report()
    for assignment in assignments:  # one scratch course and batch per assignment
        group = [c for c in cases if c.fixture.assignment == assignment]
        with warnings.catch_warnings():  # fixtures built by hand may lack cell ids; nbformat only warns
            warnings.simplefilter("ignore")
            graded = grade.grade_fixtures([c.fixture for c in group], sorted({c.fixture.notebook for c in group}),
                                          workers=workers, root=course.root)
        try:
            rep = rep.merged(evaluate(group, graded, grade.expected_scores))
        finally:
            if keep:
                print(f"scratch course kept in {graded.course.root}", file=out)
            else:
                grade.cleanup(graded)
    rep.seconds = time.perf_counter() - t0
    print(rep.text(), file=out)
    return rep
