"""check: the instructor's self-check, in a scratch copy of the course.

1. release/ is identical to a fresh generation from source/;
2. every source notebook, submitted as is, scores full marks on every autograded part;
3. every release notebook, submitted as is, grades without errors and scores 0.
"""
from __future__ import annotations

import shutil

from attnkit.authoring import notebooks as nbu
from attnkit.course import Course
from attnkit.batch.driver import autograde
from attnkit.authoring.release import differences, generate, problems
from attnkit.reports import scores
from attnkit.batch.results import Status

SOLUTION, UNTOUCHED = "instructor-solution", "untouched-release"


def check(course: Course, assignments: list[str] | None = None, workers: int | None = None, log=print) -> bool:
    ok = True
    for assignment in assignments or course.assignments():
        scratch = course.scratch_copy()
        try:
            generate(scratch, assignment)
            diff = differences(course.path("release", assignment), scratch.path("release", assignment)) \
                if course.path("release", assignment).is_dir() else [f"release/{assignment} does not exist"]
            if diff:
                ok = False
                log(f"FAIL release/{assignment} is not what source/ generates (run `./kit release`):\n  " + "\n  ".join(diff))
            else:
                log(f"ok   release/{assignment} equals a fresh generation")
            bad = problems(scratch, assignment)
            if bad:
                ok = False
                log("FAIL the generated release is not clean:\n  " + "\n  ".join(bad))
            for sid, where in ((SOLUTION, "source"), (UNTOUCHED, "release")):
                dest = scratch.path("submitted", sid, assignment)
                dest.mkdir(parents=True)
                for nb in scratch.path(where, assignment).glob("*.ipynb"):
                    shutil.copy2(nb, dest / nb.name)
            results = {r.student: r for r in autograde(scratch, assignment, [SOLUTION, UNTOUCHED], workers, progress=False,
                                                                allow_unsandboxed=True)}
            data = scores(scratch, assignment)["students"]
            auto_cells = {}
            for src in scratch.path("source", assignment).glob("*.ipynb"):
                snb = nbu.read(src)
                auto_cells[src.stem] = {nbu.grade_id(c) for c in snb.cells if nbu.is_test_cell(c)}
            for sid, want in ((SOLUTION, "full"), (UNTOUCHED, "zero")):
                for nbres in results[sid].notebooks:
                    if nbres.status is not Status.GRADED:
                        ok = False
                        log(f"FAIL {where_of(sid)} {nbres.notebook} could not be graded: {nbres.message}")
                for nb, cells in auto_cells.items():
                    per = data[sid][nb]["cells"]
                    wrong = [gid for gid in sorted(cells)
                             if (per[gid][0] != per[gid][1] if want == "full" else per[gid][0] != 0)]
                    got = sum(per[g][0] or 0 for g in cells)
                    mx = sum(per[g][1] for g in cells)
                    if wrong:
                        ok = False
                        log(f"FAIL {where_of(sid)} {nb}: autograded {got:g}/{mx:g}; "
                            f"expected {'full marks' if want == 'full' else '0'}; cells: {', '.join(wrong)}")
                        for line in why(scratch.path("autograded", sid, assignment, f"{nb}.ipynb"), wrong):
                            log(f"       {line}")
                    else:
                        log(f"ok   {where_of(sid)} {nb}: autograded {got:g}/{mx:g}")
        finally:
            shutil.rmtree(scratch.root, ignore_errors=True)
    log("check passed" if ok else "check FAILED")
    return ok


def why(autograded, cells: list[str]) -> list[str]:
    """'<cell>: ename: evalue' for each listed cell that failed, as feedback shows it (a cell that
    passed where it should have failed has no message)."""
    from attnkit.reports import failures

    try:
        fails = failures(nbu.read(autograded))
    except Exception as exc:  # no autograded notebook: the status line above says why
        return [f"(no autograded notebook to read: {type(exc).__name__})"]
    return [f"{gid}: {fails[gid].splitlines()[0] if fails[gid] else ''}" for gid in cells if gid in fails]


def where_of(sid: str) -> str:
    return {SOLUTION: "source notebook as submitted:", UNTOUCHED: "release notebook as submitted:"}[sid]
