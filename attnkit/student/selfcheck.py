"""The student's self-check: run a notebook, report each visible test and each unfilled blank.

    python selfcheck.py q3_multihead_attention.ipynb [more.ipynb ...]

Exit status 0 when every visible test passes, no graded blank is left and every written answer
is filled in, 1 otherwise, 2 when a notebook cannot be run (nbgrader's own ``validate`` always
exits 0). A cell that no test grades (an experiment) may keep its blank. This file needs only
nbformat and nbclient, so it ships as is in the student bundle; ``./kit validate`` runs the same
report on the course's kernel. Hidden tests are not in student notebooks: they run at grading.
"""
from __future__ import annotations

import os
import sys

BLANK_MARKERS = ("_____", "raise NotImplementedError")
TEXT_STUB = "YOUR ANSWER HERE"     # nbgrader's placeholder in a written answer
NOT_CHECKED = "not checked here"   # what a visible check prints when it could not check its part
# A source notebook's test cells hold hidden-test regions. Spelled apart: this file ships in the student
# bundle, which the release scan refuses if it holds a markup word.
HIDDEN_MARKER = " ".join(("BEGIN", "HIDDEN", "TESTS"))
# (Standalone on purpose: it ships in the student bundle, which holds no kit code, so it reads
# the nbgrader cell metadata and error outputs itself.)
CELL_TIMEOUT = 120


BLANK_WORDS = "still a blank `_____`: fill it in"
TODO_WORDS = "not written yet: replace `raise NotImplementedError()` by your code"


def untouched(part: str, ename: str, evalue: str) -> str | None:
    """The one message for a part whose code is still as released, whatever raised on the way: "<part>: still a
    blank `_____`: fill it in" or "<part>: not written yet: ..."; None for any other failure (its own message)."""
    text = f"{ename}: {evalue}"
    if "still a blank" in text or "not written yet" in text or "still has a blank" in text:
        return None  # the check's own message already says which blank or function
    if "_____" in text:
        return f"{part}: {BLANK_WORDS}"
    if "NotImplementedError" in text:
        return f"{part}: {TODO_WORDS}"
    return None


def part_labels(nb) -> dict:
    """grade_id -> the part's name as the homework says it (the notebook's ``attnkit.parts`` metadata)."""
    parts = (nb.get("metadata", {}).get("attnkit") or {}).get("parts") or {}
    return {str(k): str(v) for k, v in parts.items() if isinstance(v, str)}


def _meta(cell) -> dict:
    return cell.get("metadata", {}).get("nbgrader", {})


def _is_test(cell) -> bool:
    return cell.cell_type == "code" and bool(_meta(cell).get("locked")) and not _meta(cell).get("solution")


def live_blanks(source: str) -> bool:
    """A blank in a line that runs: comment lines (the instructor's stub lines in a source notebook,
    a hint) hold none."""
    return any(b in line for line in source.splitlines() if not line.lstrip().startswith("#") for b in BLANK_MARKERS)


def _checksum(cell) -> str:
    """nbgrader's cell checksum (nbgrader.utils.compute_checksum): the release stores it, so an
    unchanged cell is recognised."""
    import hashlib

    m, meta = hashlib.md5(), _meta(cell)
    for part in (cell.source, cell.cell_type, str(bool(meta.get("grade"))), str(bool(meta.get("solution"))),
                 str(bool(meta.get("locked"))), meta.get("grade_id", "")):
        m.update(part.encode("utf-8"))
    if meta.get("grade"):
        m.update(str(float(meta.get("points") or 0)).encode("utf-8"))
    return m.hexdigest()


def unanswered(cell) -> bool:
    """A written answer still as released: nbgrader's placeholder, the released text, or nothing."""
    text = cell.source.strip()
    return TEXT_STUB in text or not text or _meta(cell).get("checksum") == _checksum(cell)


def _graded_later(cells, i: int) -> bool:
    """Does a graded test cell follow answer cell i before the next code answer cell (what tests it)?"""
    for cell in cells[i + 1:]:
        if cell.cell_type == "code" and _meta(cell).get("solution"):
            return False
        if _is_test(cell) and _meta(cell).get("grade"):
            return True
    return False


def _text(output) -> str:
    if output.get("output_type") == "stream":
        return output.get("text", "")
    if output.get("output_type") == "error":
        return f"{output.get('ename')}: {output.get('evalue')}"
    return str(output.get("data", {}).get("text/plain", ""))


def report(nb, name: str, log=print) -> int:
    """Exit code for an executed notebook, logging one line per failed or unchecked test, unfilled
    blank and unanswered written answer. A source notebook's test cells hold their hidden tests
    too (``./kit validate`` runs them as grading does): the summary says so."""
    failed, unchecked, passed, hidden, blanks, optional, written = [], [], 0, 0, [], [], []
    source = any(_is_test(c) and HIDDEN_MARKER in c.source for c in nb.cells)
    labels = part_labels(nb)
    for i, cell in enumerate(nb.cells):
        m = _meta(cell)
        gid = m.get("grade_id") or f"cell {i}"
        if m.get("solution"):
            if cell.cell_type == "markdown":
                if m.get("grade") and unanswered(cell):
                    written.append((gid, m.get("points") or 0))
            elif live_blanks(cell.source):
                (blanks if _graded_later(nb.cells, i) else optional).append(gid)
            continue
        if not _is_test(cell):
            continue
        outputs = cell.get("outputs", [])
        errors = [o for o in outputs if o.get("output_type") == "error"]
        text = "\n".join(_text(o) for o in outputs)
        if errors:
            first = errors[0]
            words = untouched(labels.get(gid, gid), first.get("ename", ""), first.get("evalue", ""))
            text = f"AssertionError: {words}" if words else (_text(first).splitlines() or [""])[0]
            failed.append(f"{gid}: {text}")  # the message grading gives (transforms.NameUntouchedParts)
        elif m.get("grade"):
            note = next((line.strip() for line in text.splitlines() if NOT_CHECKED in line), None)
            if note is None and any(b in text for b in BLANK_MARKERS):  # it ran into a blank but did not raise
                note = next(line.strip() for line in text.splitlines() if any(b in line for b in BLANK_MARKERS))
            if note is not None:
                unchecked.append((gid, note))
            else:
                passed += 1
                hidden += HIDDEN_MARKER in cell.source
    for gid in blanks:
        log(f"BLANK    {gid}: still has a blank (_____ or NotImplementedError) to fill in")
    for gid, points in written:
        log(f"WRITTEN  {gid}: written answer ({points:g} points) not answered yet (graded by hand)")
    for line in failed:
        log(f"FAIL     {line}")
    for gid, note in unchecked:
        log(f"UNCHECKED {gid}: not counted as passed: {note}")
    for gid in optional:
        log(f"OPTIONAL {gid}: still has a blank, but no test grades this cell (optional)")
    tests = (f"{passed} test cells passed ({hidden} of them with hidden tests, run as at grading)" if source
             else f"{passed} visible test cells passed")
    log(f"{name}: {tests}, {len(failed)} failed, {len(unchecked)} not checked yet, "
        f"{len(blanks)} answer cells unfinished, {len(written)} written answers unanswered")
    if not (failed or unchecked or blanks or written):
        log("Success: every test passes and every answer is filled in. "
            + ("Hidden tests ran too." if source else "Hidden tests run at grading time; written answers are graded by hand."))
    return 1 if failed or unchecked or blanks or written else 0


def run(path: str, timeout: int = CELL_TIMEOUT):
    """The notebook executed top to bottom in its own folder, errors recorded, never raised."""
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    folder = os.path.dirname(os.path.abspath(path))
    client = NotebookClient(nb, timeout=timeout, allow_errors=True, kernel_name="python3",
                            resources={"metadata": {"path": folder}},
                            extra_arguments=["--IPKernelApp.log_level=ERROR"])  # no TCP notice on every run
    client.execute(env={**os.environ, "ATTNKIT_CHECKS": "raise"})  # every check raises, as at grading
    return nb


def main(argv=None, log=print) -> int:
    paths = list(sys.argv[1:] if argv is None else argv)
    if not paths:
        log(__doc__.strip().split("\n\n")[1])
        return 2
    code = 0
    for path in paths:
        if not os.path.isfile(path):
            log(f"error: {path} does not exist")
            code = max(code, 2)
            continue
        try:
            nb = run(path)
        except Exception as exc:  # a notebook that is not JSON, a kernel that cannot start
            log(f"error: could not run {os.path.basename(path)}: {type(exc).__name__}: {exc}")
            code = max(code, 2)
            continue
        code = max(code, report(nb, os.path.basename(path), log))
    return code


if __name__ == "__main__":
    sys.exit(main())
