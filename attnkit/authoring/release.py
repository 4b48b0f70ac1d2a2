"""release: generate the student versions, then prove them clean (the give-away check is giveaways.py)."""
from __future__ import annotations

import ast
import filecmp
import re
import shutil
import tempfile
from pathlib import Path

from attnkit.authoring import markup, notebooks as nbu
from attnkit.authoring.giveaways import runnable_giveaways
from attnkit.course import Course


class ReleaseError(RuntimeError):
    pass


def generate(course: Course, assignment: str) -> None:
    """nbgrader generate_assignment, keeping the old release if it fails."""
    dest = course.path("release", assignment)
    backup = None
    if dest.exists():
        backup = Path(tempfile.mkdtemp(prefix="release-backup-")) / assignment
        shutil.copytree(dest, backup)
    try:
        result = course.api().generate_assignment(assignment, force=True)
        if not result["success"] and backup is not None:
            shutil.rmtree(dest, ignore_errors=True)
            shutil.copytree(backup, dest)
    finally:
        if backup is not None:
            shutil.rmtree(backup.parent, ignore_errors=True)
    if not result["success"]:
        log = result.get("log", "") + result.get("error", "")
        hint = ""
        if "because there are submissions" in log:
            hint = ("\nThe set of graded cells changed after students submitted; nbgrader cannot "
                    "change it now. Restore the old cells or start a new assignment.")
        raise ReleaseError(f"generate_assignment {assignment} failed; release/{assignment} left as it was.{hint}\n{log[-3000:]}")
    for junk in dest.rglob("__pycache__"):
        shutil.rmtree(junk)
    write_diagnoses_setting(course, dest)


DIAGNOSES_LINE = "DIAGNOSES = True\n"   # in a course helper file: the course's setting, as released


def write_diagnoses_setting(course: Course, dest: Path) -> None:
    """The released helpers carry the course's c.CourseExecute.diagnoses, so that with diagnoses off no visible
    check names a likely mistake in a student's own JupyterLab either (grading sets ATTNKIT_DIAGNOSES)."""
    from attnkit.sandbox.manager import diagnoses_setting
    if diagnoses_setting(course.config()):
        return
    for py in sorted(dest.glob("*.py")):
        text = py.read_text()
        if DIAGNOSES_LINE in text:
            py.write_text(text.replace(DIAGNOSES_LINE, "DIAGNOSES = False\n", 1))


def bare_expression_cells(nb) -> list[str]:
    """Test cells whose last statement is a bare expression (nbgrader reads its value as a score)."""
    import ast

    bad = []
    for cell in nb.cells:
        if not nbu.is_test_cell(cell):
            continue
        try:
            tree = ast.parse("\n".join(l for l in cell.source.split("\n") if not l.lstrip().startswith("%")))
        except SyntaxError:
            bad.append(f"{nbu.grade_id(cell)} (syntax error)")
            continue
        if tree.body and isinstance(tree.body[-1], ast.Expr) and not isinstance(tree.body[-1].value, ast.Call):
            bad.append(nbu.grade_id(cell))
    return bad


def _used_names(code: str) -> set[str]:
    """Names Python code uses (loads, stores, attributes, or calls it shows students in a
    string); an import alone is not a use.
    IPython magics are skipped; unparsable code falls back to every identifier in it."""
    text = "\n".join(l for l in code.split("\n") if not l.lstrip().startswith(("%", "!")))
    try:
        tree = ast.parse(text)
    except SyntaxError:
        return set(re.findall(r"[A-Za-z_]\w*", text))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            names.add(node.id)
        elif isinstance(node, ast.Attribute):
            names.add(node.attr)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            names |= set(re.findall(r"([A-Za-z_]\w*)\(", node.value))  # "try check_linear_time(...) yourself"
    return names


def grader_only_names(course: Course, assignment: str, release_dir: Path) -> list[str]:
    """Names defined in a released helper file that only hidden tests use.

    Used = used by code in a released notebook cell (an import alone does not count), named in
    its prose, or used by the released helper files' own code (other than where it is defined)."""
    hidden, visible = set(), set()
    for src_path in sorted(course.path("source", assignment).glob("*.ipynb")):
        for cell, items in nbu.parsed(nbu.read(src_path), src_path.name):
            for item in items:
                if isinstance(item, markup.Region) and item.kind == markup.HIDDEN:
                    hidden |= _used_names("\n".join(item.body))
    for rel_path in sorted(release_dir.glob("*.ipynb")):
        for cell in nbu.read(rel_path).cells:
            visible |= _used_names(cell.source) if cell.cell_type == "code" else set(re.findall(r"\w+", cell.source))
    defined = {}
    for py in sorted(release_dir.glob("*.py")):
        tree = ast.parse(py.read_text())
        for node in tree.body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                defined[node.name] = py.name
                body = ast.Module(body=node.body, type_ignores=[])
                visible |= {n.id for n in ast.walk(body) if isinstance(n, ast.Name)}
                visible |= {n.attr for n in ast.walk(body) if isinstance(n, ast.Attribute)}
            else:
                visible |= {n.id for n in ast.walk(node) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}
    return [f"{defined[name]}: {name} is used only by hidden tests; keep it in the assignment's grader "
            "helper (CourseExecute.graders, e.g. graders/<assignment>.py), not in a file students receive" for name in sorted(defined) if name in hidden and name not in visible]


def _released_texts(release_dir: Path):
    """(where, text, is_cell) of every released cell and helper file."""
    for path in sorted(release_dir.rglob("*")):
        if path.suffix == ".ipynb":
            for i, cell in enumerate(nbu.read(path).cells):
                yield f"{path.name} cell {nbu.grade_id(cell) or '#' + str(i)}", cell.source, True
        elif path.is_file() and "__pycache__" not in path.parts:
            try:
                yield path.name, path.read_text(), False
            except UnicodeDecodeError:
                continue


def secret_scan(course: Course, assignment: str, folder: Path) -> list[str]:
    """Every cell and text file under ``folder`` (a release, a student bundle) checked for the
    markup, solution lines, hidden-test and mark-scheme lines, and declared answer texts."""
    paths = sorted(course.path("source", assignment).glob("*.ipynb"))
    solution, declared = [], []
    for path in paths:
        src = nbu.read(path)
        solution += [(path.stem, line) for line in nbu.solution_lines(src)]
        declared += [(path.stem, gid, text) for gid, text in nbu.answer_texts(src)]
    hidden = [("the assignment", line) for line in nbu.assignment_hidden_lines(paths)]
    found = []
    for where, text, is_cell in _released_texts(folder):
        marker = markup.contains_marker(text)
        if marker:
            found.append(f"{where}: contains the marker {marker!r}")
        # In a cell a secret line counts anywhere; in a helper file's own code only as a whole line
        # (its code may share fragments with a hidden test, e.g. "for d in (D, D, M))").
        haystack = text if is_cell else {l.strip() for l in text.split("\n")}
        for stem, line in solution:
            if line in haystack:
                found.append(f"{where}: contains solution text of {stem} {line[:40]!r}...")
        for stem, line in hidden:
            if line in haystack:
                found.append(f"{where}: contains hidden test or mark scheme text of {stem} {line[:40]!r}...")
        flat = markup.normalise(text)
        for stem, gid, answer in declared:
            if markup.normalise(answer) in flat:
                found.append(f"{where}: states the answer of {stem}:{gid} ({answer!r})")
    return list(dict.fromkeys(found))


def hidden_regions_outside_grader(nb) -> list[str]:
    """Test cells with a hidden region that does not start with the grader line: every hidden test runs in
    the grader process (attnkit/grader/), never in the student's kernel."""
    from attnkit.authoring.markup import runs_in_grader

    bad = []
    for cell in nb.cells:
        for region in markup.regions(cell.source, markup.HIDDEN):
            if not runs_in_grader("\n".join(region.body)):
                bad.append(nbu.grade_id(cell))
    return bad


def problems(course: Course, assignment: str, release_root: Path | None = None) -> list[str]:
    """Everything that makes a release unfit for students (empty list = clean)."""
    release_dir = (release_root or course.path("release")) / assignment
    malformed = []
    for src_path in sorted(course.path("source", assignment).glob("*.ipynb")):
        try:
            nbu.parsed(nbu.read(src_path), src_path.name)
        except markup.MarkupError as exc:
            malformed.append(str(exc))
    if malformed:  # nothing else can be judged before the markup is right
        return malformed
    found = []
    for src_path in sorted(course.path("source", assignment).glob("*.ipynb")):
        rel_path = release_dir / src_path.name
        if not rel_path.exists():
            found.append(f"{rel_path.name}: missing from the release")
            continue
        src, rel = nbu.read(src_path), nbu.read(rel_path)
        for gid in hidden_regions_outside_grader(src):
            found.append(f"{src_path.name}: the hidden tests of {gid} must start with the grader line "
                         "(attnkit.authoring.markup.GRADER_LINE): hidden tests run in the grader process")
        for gid in bare_expression_cells(src):
            found.append(f"{src_path.name}: test cell {gid} ends in a bare expression (its value would be read as "
                         "a score); end it with an assert or a call")
        for cell in rel.cells:
            if cell.cell_type == "code" and (cell.get("outputs") or cell.get("execution_count")):
                found.append(f"{rel_path.name}: cell {nbu.grade_id(cell) or '?'} has outputs")
        src_answers = {nbu.grade_id(c): c.source for c in src.cells if nbu.is_answer_cell(c)}
        for cell in rel.cells:
            gid = nbu.grade_id(cell)
            if gid in src_answers:
                if cell.source == src_answers[gid]:
                    found.append(f"{rel_path.name}: answer cell {gid} is not stubbed")
                elif cell.cell_type == "code" and "_____" not in cell.source and "NotImplementedError" not in cell.source:
                    found.append(f"{rel_path.name}: answer cell {gid} has no blank (_____ or NotImplementedError)")
                elif cell.cell_type == "markdown" and markup.TEXT_STUB not in cell.source:
                    found.append(f"{rel_path.name}: written answer {gid} lacks {markup.TEXT_STUB!r}")
        missing = set(src_answers) - {nbu.grade_id(c) for c in rel.cells}
        found += [f"{rel_path.name}: answer cell {gid} missing" for gid in sorted(missing)]
    if release_dir.is_dir():
        found += secret_scan(course, assignment, release_dir)
        found += grader_only_names(course, assignment, release_dir)
        found += runnable_giveaways(course, assignment, release_dir)
    return found


def release(course: Course, assignments: list[str] | None = None, log=print) -> None:
    for assignment in assignments or course.assignments():
        generate(course, assignment)
        bad = problems(course, assignment)
        if bad:
            raise ReleaseError("release/%s is not clean:\n  %s" % (assignment, "\n  ".join(bad)))
        n = len(list(course.path("release", assignment).glob("*.ipynb")))
        log(f"released {assignment}: {n} notebooks in release/{assignment}, clean "
            "(no solutions, hidden tests, mark schemes or outputs; every answer stubbed)")


def differences(a: Path, b: Path) -> list[str]:
    """Files that differ between two folders (recursively), ignoring caches."""
    cmp = filecmp.dircmp(a, b, ignore=["__pycache__", ".ipynb_checkpoints"])
    out = [f"only in {a}: {x}" for x in cmp.left_only] + [f"only in {b}: {x}" for x in cmp.right_only]
    _, mismatch, errors = filecmp.cmpfiles(a, b, cmp.common_files, shallow=False)
    out += [f"differs: {x}" for x in mismatch + errors]
    for sub in cmp.common_dirs:
        out += differences(a / sub, b / sub)
    return out
