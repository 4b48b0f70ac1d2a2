"""Sample submissions for the demo, built from source/ so no solution text lives elsewhere."""
from __future__ import annotations

import shutil

from attnkit import markup
from attnkit import notebooks as nbu
from attnkit.course import Course

SAMPLES = {
    "sample-solution": "every blank filled with the instructor's solution",
    "sample-untouched": "the release copy, submitted without changes",
    "sample-partial": "the first half of the blanks filled in, the rest left as released",
}


def partial(source_nb):
    """A student halfway through: the first half of the blanks filled in, the rest as released."""
    answers = {}
    found = nbu.regions(source_nb)
    for i, region in enumerate(found):
        if i >= (len(found) + 1) // 2:
            stub = region.stub or markup.CODE_STUB.split("\n")
            if region.cell_id and _is_markdown(source_nb, region.cell_id):
                stub = region.stub or [markup.TEXT_STUB]
            answers[region.label] = "\n".join(stub)
    return nbu.fill(source_nb, answers)


def _is_markdown(nb, gid) -> bool:
    return any(nbu.grade_id(c) == gid and c.cell_type == "markdown" for c in nb.cells)


def place(course: Course, assignment: str) -> list[str]:
    """Write the sample submissions into submitted/<student>/<assignment>/."""
    for sid in SAMPLES:
        dest = course.path("submitted", sid, assignment)
        if dest.exists():
            shutil.rmtree(dest)
        dest.mkdir(parents=True)
        for src in sorted(course.path("source", assignment).glob("*.ipynb")):
            snb = nbu.read(src)
            if sid == "sample-solution":
                nb = nbu.fill(snb)
            elif sid == "sample-untouched":
                shutil.copy2(course.path("release", assignment, src.name), dest / src.name)
                continue
            else:
                nb = partial(snb)
            nbu.write(nb, dest / src.name)
    return list(SAMPLES)
