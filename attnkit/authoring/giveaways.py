"""Give-aways a program can find: a multiple-choice part whose options run on the inputs the release hands out."""
from __future__ import annotations

import ast
import copy
import re
from pathlib import Path

from attnkit.authoring import markup, notebooks as nbu
from attnkit.course import Course


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
    proc = subprocess.run([sys.executable, "-c", "from attnkit.authoring.giveaways import _giveaway_worker; _giveaway_worker()"],
                          input=json.dumps(job), capture_output=True, text=True, timeout=300, cwd=release_dir)
    if proc.returncode != 0:
        return [f"the give-away check could not run the released inputs: {proc.stderr.strip()[-500:]}"]
    return json.loads(proc.stdout)
