"""Grade fixture submissions through the real pipeline (release -> autograde -> gradebook)."""
from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

from attnkit import notebooks as nbu
from attnkit.course import Course
from attnkit.grading import autograde
from attnkit.release import generate
from attnkit.reports import scores

ROOT = Path(__file__).resolve().parents[1]
ASSIGNMENT = "hw9"


@dataclass
class Graded:
    course: Course
    results: dict                      # student -> grading result (status per notebook)
    scores: dict                       # student -> notebook -> {"cells": {gid: (score, max)}, ...}
    messages: dict = field(default_factory=dict)  # student -> {gid: "ename: evalue"}


def submission_for(fixture, course: Course):
    """The notebook a fixture submits (None = submit nothing)."""
    if fixture.raw is not None:
        return fixture.raw
    src = nbu.read(course.path("source", ASSIGNMENT, f"{fixture.notebook}.ipynb"))
    if fixture.default == "release":
        nb = nbu.read(course.path("release", ASSIGNMENT, f"{fixture.notebook}.ipynb"))
    else:
        nb = nbu.fill(src, fixture.answers, default=fixture.default)
    if fixture.mutate is not None:
        nb = fixture.mutate(nb)
    return nb


def grade_fixtures(fixtures, notebooks, workers: int = 2) -> Graded:
    course = Course(ROOT).scratch_copy(notebooks=notebooks)
    generate(course, ASSIGNMENT)
    for fx in fixtures:
        dest = course.path("submitted", fx.student, ASSIGNMENT)
        dest.mkdir(parents=True)
        sub = submission_for(fx, course)
        if sub is None:
            continue
        target = dest / f"{fx.notebook}.ipynb"
        if isinstance(sub, bytes):
            target.write_bytes(sub)
        else:
            nbu.write(sub, target)
    # our own fixtures: graded even where no sandbox works (the isolation cases then fail, as they should)
    results = {r["student"]: r for r in autograde(course, ASSIGNMENT, [f.student for f in fixtures], workers,
                                                   progress=False, allow_unsandboxed=True)}
    data = scores(course, ASSIGNMENT)["students"]
    messages = {}
    for fx in fixtures:
        path = course.path("autograded", fx.student, ASSIGNMENT, f"{fx.notebook}.ipynb")
        msgs = {}
        if path.exists():
            for cell in nbu.read(path).cells:
                if nbu.is_test_cell(cell):
                    errs = [o for o in cell.outputs if o.output_type == "error"]
                    if errs:
                        msgs[nbu.grade_id(cell)] = f"{errs[0].ename}: {errs[0].evalue}"
        messages[fx.student] = msgs
    return Graded(course, results, data, messages)


def expected_scores(fixture, course: Course) -> dict:
    """grade_id -> the score this fixture must get on every autograded test cell."""
    src = nbu.read(course.path("source", ASSIGNMENT, f"{fixture.notebook}.ipynb"))
    out = {}
    for cell in src.cells:
        if nbu.is_test_cell(cell):
            full = float(nbu.meta(cell)["points"])
            out[nbu.grade_id(cell)] = full if fixture.default == "solution" else 0.0
    unknown = set(fixture.expected) - set(out)
    assert not unknown, f"fixture {fixture.student} names unknown test cells {sorted(unknown)}"
    out.update({k: float(v) for k, v in fixture.expected.items()})
    return out


def assert_fixture(graded: Graded, fixture) -> None:
    """Every test cell scores exactly as the fixture says, and the student sees the right messages."""
    want = expected_scores(fixture, graded.course)
    cells = graded.scores[fixture.student][fixture.notebook]["cells"]
    got = {gid: float(cells[gid][0] or 0) for gid in want}
    msgs = graded.messages.get(fixture.student, {})
    detail = "\n".join(f"  {gid}: got {got[gid]:g}, want {want[gid]:g}  {msgs.get(gid, '')[:200]}"
                       for gid in want if got[gid] != want[gid])
    assert got == want, f"{fixture.student} ({fixture.why}) scored differently:\n{detail}"
    for gid, text in fixture.messages.items():
        assert text in msgs.get(gid, ""), (
            f"{fixture.student}: the message for {gid} should mention {text!r}, got {msgs.get(gid, '(none)')!r}")


def cleanup(graded: Graded) -> None:
    shutil.rmtree(graded.course.root, ignore_errors=True)


def bank(fixtures, notebooks, cell_timeout: str = "20"):
    """A module-scoped pytest fixture that grades a fixture bank once, in one batch.

    A short per-cell timeout keeps infinite-loop fixtures quick (worker processes inherit it).
    """
    import pytest

    @pytest.fixture(scope="module")
    def graded():
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("ATTNKIT_CELL_TIMEOUT", cell_timeout)
            g = grade_fixtures(fixtures, notebooks)
        yield g
        cleanup(g)

    return graded


def bank_test(fixtures):
    """The parametrised test that every fixture of a bank is graded and scores exactly as expected."""
    import pytest

    @pytest.mark.parametrize("fixture", fixtures, ids=[f.student for f in fixtures])
    def test_fixture_scores_exactly(graded, fixture):
        statuses = [n["status"] for n in graded.results[fixture.student]["notebooks"] if n["notebook"] == fixture.notebook]
        assert statuses == ["graded"], f"{fixture.student}: {graded.results[fixture.student]}"
        assert_fixture(graded, fixture)

    return test_fixture_scores_exactly
