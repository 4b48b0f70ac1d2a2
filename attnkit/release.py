"""release: generate the student versions, then prove them clean."""
from __future__ import annotations

import filecmp
import shutil
import tempfile
from pathlib import Path

import ast
import copy
import re

from attnkit import markup
from attnkit import notebooks as nbu
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
    from attnkit.sandbox import diagnoses_setting
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


# ==== Give-aways a program can find: running the options on the inputs the release provides ====
#
# A multiple-choice part whose options are code (``torch.einsum(...)``) or shapes (``[h, d, q]``) is given
# away when the release hands out tensors on which only the right option runs, or a tensor in the right
# shape (and in no other option's). "Handed out" = an assignment anywhere in a released code cell (not an
# answer cell) whose value only calls torch, math and the released helper files' functions with constants:
# what a student gets by running that line. Inputs the student must choose (shapes passed in) are not
# handed out. Evaluated in a subprocess (torch, the released helper imported from the release folder).

_MC_ANSWER = re.compile(r"^\s*(answer_\w+)\s*=\s*(\d+)\s*$", re.M)
_OPTION = re.compile(r"^\s*(\d+)\.\s+(.*\S)\s*$", re.M)
_SHAPE_TEXT = re.compile(r"^\s*`?(\w+)`?\s*:\s*(\[[\w\s,]+\])\s*$")


def _option_kind(text: str):
    """('expr', names) for a code option, ('shape', letters) for a shape option, None otherwise."""
    m = re.fullmatch(r"`([^`]+)`", text.strip())
    if not m:
        return None
    try:
        tree = ast.parse(m.group(1), mode="eval").body
    except SyntaxError:
        return None
    if isinstance(tree, ast.List) and tree.elts and all(isinstance(e, ast.Name) for e in tree.elts):
        return "shape", [e.id for e in tree.elts]
    if isinstance(tree, ast.Call):
        names = sorted({n.id for n in ast.walk(tree) if isinstance(n, ast.Name)} - {"torch", "math"})
        return "expr", m.group(1), names
    return None


def multiple_choice_parts(nb, stem: str) -> list[dict]:
    """The parts of a SOURCE notebook answered by ``answer_X = <option number>``, with their options
    (from the markdown cell before the answer cell) and the right option (the solution's number)."""
    parts, last_md = [], None
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            last_md = cell
            continue
        if not nbu.is_answer_cell(cell) or last_md is None:
            continue
        m = _MC_ANSWER.search("\n".join(markup.secret_lines(cell.source, (markup.SOLUTION,))))
        if not m:
            continue
        text = last_md.source.split("### BEGIN MARK SCHEME")[0]
        options = {int(n): _option_kind(t) for n, t in _OPTION.findall(text)}
        if not options or int(m.group(2)) not in options or any(v is None for v in options.values()):
            continue
        kinds = {v[0] for v in options.values()}
        if len(kinds) != 1:
            continue
        tensor = re.findall(r"`([A-Za-z_]\w*)`", text.split("\n1.")[0])
        parts.append({"notebook": stem, "part": m.group(1), "label": "(%s)" % m.group(1)[len("answer_"):],
                      "right": int(m.group(2)), "kind": kinds.pop(),
                      "options": {n: list(v[1:]) for n, v in options.items()},
                      "tensor": tensor[-1] if tensor else None})
    return parts


def graded_shapes(nb, stem: str) -> list[dict]:
    """Declared answer texts of the form ``NAME: [a, b, c]``: a tensor's graded shape."""
    out = []
    for gid, text in nbu.answer_texts(nb):
        m = _SHAPE_TEXT.match(text)
        if m:
            out.append({"notebook": stem, "part": gid, "tensor": m.group(1),
                        "letters": re.findall(r"\w+", m.group(2))})
    return out


def _is_constant(node) -> bool:
    """A number or string literal (signed), or a tuple or list of them."""
    if isinstance(node, ast.Constant):
        return isinstance(node.value, (int, float, str)) and not isinstance(node.value, bool)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        return _is_constant(node.operand)
    return isinstance(node, (ast.Tuple, ast.List)) and all(_is_constant(e) for e in node.elts)


def _bind_constants(tree, known: dict) -> None:
    """Update ``known`` (name -> constant node) with the cell's constant assignments (``d = 12``,
    ``b, d, h = 2, 12, 3``) in source order; a name bound to anything else is dropped."""
    stores = sorted((n for n in ast.walk(tree) if isinstance(n, (ast.Assign, ast.AnnAssign, ast.AugAssign,
                                                                 ast.For, ast.With, ast.NamedExpr,
                                                                 ast.FunctionDef, ast.Import, ast.ImportFrom))),
                    key=lambda n: (n.lineno, n.col_offset))
    for node in stores:
        pairs = []
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target, value = node.targets[0], node.value
            if isinstance(target, ast.Name):
                pairs = [(target, value)]
            elif (isinstance(target, ast.Tuple) and isinstance(value, ast.Tuple) and len(target.elts) == len(value.elts)
                  and all(isinstance(t, ast.Name) for t in target.elts)):
                pairs = list(zip(target.elts, value.elts))
        bound = {t.id: v for t, v in pairs if _is_constant(v)}
        for n in ast.walk(node):  # every other name this statement binds is no constant any more
            name = n.id if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store) else getattr(n, "name", None)
            if isinstance(name, str) and name not in bound:
                known.pop(name, None)
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            for alias in node.names:
                known.pop((alias.asname or alias.name).split(".")[0], None)
        known.update(bound)


class _Inline(ast.NodeTransformer):
    """Names bound to constants replaced by the constants (``mq_inputs(b, d, h)`` -> ``mq_inputs(2, 12, 3)``)."""

    def __init__(self, known: dict):
        self.known = known

    def visit_Name(self, node):
        if isinstance(node.ctx, ast.Load) and node.id in self.known:
            return ast.copy_location(copy.deepcopy(self.known[node.id]), node)
        return node


def handed_out_inputs(rel_nb, helper_names: set[str]) -> list[dict]:
    """Assignments in released code cells (not answer cells) that only call torch, math and the helpers'
    functions with constants: {cell, code} each, code runnable on its own. Names bound to constants in
    those cells (``b, d, h = 2, 12, 3``, earlier or in the same cell) count as the constants."""
    allowed = {"torch", "math"} | helper_names
    found, known = [], {}
    for cell in rel_nb.cells:
        if cell.cell_type != "code" or nbu.is_answer_cell(cell):
            continue
        text = "\n".join(l for l in cell.source.split("\n") if not l.lstrip().startswith(("%", "!")))
        try:
            tree = ast.parse(text)
        except SyntaxError:
            continue
        _bind_constants(tree, known)
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Assign) and isinstance(node.value, ast.Call)):
                continue
            node = ast.fix_missing_locations(_Inline(known).visit(copy.deepcopy(node)))
            loads = {n.id for n in ast.walk(node.value) if isinstance(n, ast.Name)}
            if not loads or not loads <= allowed or not loads & (helper_names | {"torch"}):
                continue
            if any(isinstance(n, (ast.Lambda, ast.Starred)) for n in ast.walk(node.value)):
                continue
            found.append({"cell": nbu.grade_id(cell) or "?", "code": ast.unparse(node)})
    return found


def _giveaway_worker() -> None:
    """Subprocess side of ``runnable_giveaways``: JSON job on stdin, JSON findings on stdout."""
    import importlib
    import inspect
    import json
    import sys

    job = json.load(sys.stdin)
    sys.path.insert(0, job["release_dir"])
    import torch

    base = {"torch": torch, "math": __import__("math")}
    for mod in job["helpers"]:
        module = importlib.import_module(mod)
        base.update({k: v for k, v in vars(module).items() if not k.startswith("_")})
    import contextlib
    import io

    found, quiet = {}, contextlib.redirect_stdout(io.StringIO())  # helpers print; stdout carries the JSON

    def note(key, message):  # one finding per part (or graded shape), at the first place that gives it away
        found.setdefault(key, [message, set()])[1].add(item["code"])

    for item in job["inputs"]:
        ns = dict(base)
        try:
            with quiet:
                exec(compile(item["code"], "<released cell>", "exec"), ns)
        except Exception:  # needs the student's answers or code: hands nothing out
            continue
        tensors = {k: v for k, v in ns.items() if k not in base and isinstance(v, torch.Tensor)}
        if not tensors:
            continue
        letters = {}
        call = ast.parse(item["code"]).body[0].value
        fn = ns.get(call.func.id) if isinstance(call.func, ast.Name) else None
        if callable(fn):
            try:
                bound = inspect.signature(fn).bind_partial(*[eval(ast.unparse(a), ns) for a in call.args],
                                                           **{k.arg: eval(ast.unparse(k.value), ns)
                                                              for k in call.keywords if k.arg})
                bound.apply_defaults()
                letters = {k: v for k, v in bound.arguments.items()
                           if len(k) == 1 and isinstance(v, int) and not isinstance(v, bool)}
            except (TypeError, ValueError):
                letters = {}

        def fits(shape, pattern):
            if len(shape) != len(pattern):
                return False
            seen = dict(letters)
            for size, letter in zip(shape, pattern):
                if seen.setdefault(letter, size) != size:
                    return False
            return True

        where = f"`{item['code'][:90]}` (cell {item['cell']})"
        for part in job["parts"]:
            if part["kind"] == "expr":
                needed = {n for opt in part["options"].values() for n in opt[1]}
                if not needed <= set(tensors):
                    continue
                runs = set()
                for n, (expr, _names) in part["options"].items():
                    try:
                        with torch.no_grad(), quiet:
                            eval(expr, {**ns})
                        runs.add(int(n))
                    except Exception:
                        pass
                if runs == {part["right"]}:
                    note((part["notebook"], part["part"]),
                         f"{part['notebook']}.ipynb {part['label']}: on the inputs that {where} hands out, only the "
                         f"right option ({part['right']}) runs; running the options gives the answer away")
            elif part["kind"] == "shape" and part["tensor"] in tensors:
                shape = tuple(tensors[part["tensor"]].shape)
                fit = {int(n) for n, (pattern,) in part["options"].items() if fits(shape, pattern)}
                if fit == {part["right"]}:
                    note((part["notebook"], part["tensor"]),
                         f"{part['notebook']}.ipynb {part['label']}: `{part['tensor']}` from {where} has the shape of "
                         f"the right option ({part['right']}) and of no other: its .shape gives the answer away")
        for g in job["shapes"]:
            if g["tensor"] in tensors and fits(tuple(tensors[g["tensor"]].shape), g["letters"]):
                note((g["notebook"], g["tensor"]),
                     f"{g['notebook']}.ipynb {g['part']}: `{g['tensor']}` from {where} has the graded shape "
                     f"[{', '.join(g['letters'])}]; a helper must not hand out a tensor in an answer's shape")
    json.dump([m + (f" (and {len(w) - 1} more places)" if len(w) > 1 else "") for m, w in found.values()], sys.stdout)


def runnable_giveaways(course: Course, assignment: str, release_dir: Path) -> list[str]:
    """Multiple-choice parts (and graded shapes) that the release's own inputs answer (see above)."""
    import json
    import subprocess
    import sys

    helpers = sorted(p.stem for p in release_dir.glob("*.py"))
    helper_names = set()
    for py in release_dir.glob("*.py"):
        tree = ast.parse(py.read_text())
        helper_names |= {n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
    parts, shapes, inputs = [], [], []
    for src_path in sorted(course.path("source", assignment).glob("*.ipynb")):
        rel_path = release_dir / src_path.name
        if not rel_path.exists():
            continue
        src = nbu.read(src_path)
        parts += multiple_choice_parts(src, src_path.stem)
        shapes += graded_shapes(src, src_path.stem)
        inputs += handed_out_inputs(nbu.read(rel_path), helper_names)
    wanted = {p["tensor"] for p in parts + shapes if p.get("tensor")}
    wanted |= {n for p in parts if p["kind"] == "expr" for opt in p["options"].values() for n in opt[1]}

    def binds(code):  # the names an assignment binds
        return {n.id for t in ast.parse(code).body[0].targets for n in ast.walk(t) if isinstance(n, ast.Name)}
    inputs = [i for i in inputs if binds(i["code"]) & wanted]
    if not inputs:  # nothing handed out that an option or a graded shape names: no need to start torch
        return []
    job = {"release_dir": str(release_dir), "helpers": helpers, "parts": parts, "shapes": shapes, "inputs": inputs}
    proc = subprocess.run([sys.executable, "-c", "from attnkit.release import _giveaway_worker; _giveaway_worker()"],
                          input=json.dumps(job), capture_output=True, text=True, timeout=300, cwd=release_dir)
    if proc.returncode != 0:
        return [f"the give-away check could not run the released inputs: {proc.stderr.strip()[-500:]}"]
    return json.loads(proc.stdout)


def hidden_regions_outside_grader(nb) -> list[str]:
    """Test cells with a hidden region that does not start with the grader line: every hidden test runs in
    the grader process (attnkit/grader/), never in the student's kernel."""
    from attnkit.grader.hidden import runs_in_grader

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
                         "(attnkit.grader.hidden.GRADER_LINE): hidden tests run in the grader process")
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
