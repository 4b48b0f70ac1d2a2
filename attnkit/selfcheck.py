"""The student's self-check: run a notebook, report each visible test and each unfilled blank.

    python selfcheck.py q3_multihead_attention.ipynb [more.ipynb ...]

Exit status 0 when every visible test passes and no blank is left, 1 otherwise, 2 when a
notebook cannot be run (nbgrader's own ``validate`` always exits 0). This file needs only
nbformat and nbclient, so it ships as is in the student bundle; ``./kit validate`` runs the same
report on the course's kernel. Hidden tests are not in student notebooks: they run at grading.
"""
from __future__ import annotations

import os
import sys

BLANK_MARKERS = ("_____", "raise NotImplementedError")
# (Standalone on purpose: it ships in the student bundle, which holds no kit code, so it reads
# the nbgrader cell metadata and error outputs itself.)
CELL_TIMEOUT = 120


def _meta(cell) -> dict:
    return cell.get("metadata", {}).get("nbgrader", {})


def report(nb, name: str, log=print) -> int:
    """Exit code for an executed notebook, logging one line per failed test or unfilled blank."""
    failed, passed, blanks = [], 0, []
    for i, cell in enumerate(nb.cells):
        m = _meta(cell)
        gid = m.get("grade_id") or f"cell {i}"
        if m.get("solution"):
            if cell.cell_type == "code" and any(b in cell.source for b in BLANK_MARKERS):
                blanks.append(gid)
            continue
        if cell.cell_type != "code" or not m.get("locked"):
            continue
        errors = [o for o in cell.get("outputs", []) if o.get("output_type") == "error"]
        if errors:
            failed.append((gid, f"{errors[0].get('ename')}: {errors[0].get('evalue')}"))
        elif m.get("grade"):
            passed += 1
    for gid in blanks:
        log(f"BLANK  {gid}: still has a blank (_____ or NotImplementedError) to fill in")
    for gid, msg in failed:
        log(f"FAIL   {gid}: {msg.splitlines()[0] if msg else ''}")
    log(f"{name}: {passed} visible test cells passed, {len(failed)} failed, {len(blanks)} answer cells unfinished")
    if not failed and not blanks:
        log("Success: every visible test passes. Hidden tests run at grading time.")
    return 1 if failed or blanks else 0


def run(path: str, timeout: int = CELL_TIMEOUT):
    """The notebook executed top to bottom in its own folder, errors recorded, never raised."""
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    folder = os.path.dirname(os.path.abspath(path))
    client = NotebookClient(nb, timeout=timeout, allow_errors=True, kernel_name="python3",
                            resources={"metadata": {"path": folder}},
                            extra_arguments=["--IPKernelApp.log_level=ERROR"])  # no TCP notice on every run
    client.execute()
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
