"""The one parser of the instructor markup in a cell's source. No other code knows its syntax.

    ### BEGIN SOLUTION (label)          a solution region; the label names it for fixtures
    <solution lines>
    ### STUB: <student line>            what students see instead (a labelled blank)
    ### END SOLUTION

    ### BEGIN HIDDEN TESTS              graded at autograde, removed from the release
    ### ANSWER TEXT: <text>             a short answer that no released cell or file may state
    ### END HIDDEN TESTS

    ### BEGIN MARK SCHEME / ### END MARK SCHEME    a written answer's rubric (graders only)

Markers are found the way nbgrader finds them (the words anywhere in the line, so ``#BEGIN
SOLUTION`` or ``##  BEGIN SOLUTION`` count too); ``STUB:`` and ``ANSWER TEXT:`` lines start with
one or more ``#``. Regions do not nest. A malformed cell raises MarkupError naming the
notebook, the cell and the line.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

SOLUTION, HIDDEN, MARK_SCHEME = "solution", "hidden", "mark scheme"
_WORDS = {SOLUTION: ("BEGIN SOLUTION", "END SOLUTION"),
          HIDDEN: ("BEGIN HIDDEN TESTS", "END HIDDEN TESTS"),
          MARK_SCHEME: ("BEGIN MARK SCHEME", "END MARK SCHEME")}
MARKER_WORDS = tuple(w for pair in _WORDS.values() for w in pair) + ("STUB:", "ANSWER TEXT:")
# First line of a hidden region that runs in the grader process (the region's first line picks its process).
GRADER_LINE = "# hidden tests: run in the grader process; the student's names stand for their kernel's objects"
_STUB = re.compile(r"^\s*#+\s*STUB:( ?)(.*)$")
_ANSWER = re.compile(r"^\s*#+\s*ANSWER TEXT:\s*(.*?)\s*$")

CODE_STUB = "# YOUR CODE HERE\nraise NotImplementedError()"
TEXT_STUB = "YOUR ANSWER HERE"
# Secret lines shorter than this (``else:``, ``return x``) are too common to count as a leak.
SECRET_MIN_CHARS = 12


class MarkupError(ValueError):
    """A malformed region: says where (notebook, cell, line) and what is wrong."""

    def __init__(self, message: str, *, notebook: str = "", cell: str = "", line: int = 0):
        where = ", ".join(p for p in (notebook, f"cell {cell}" if cell else "", f"line {line}" if line else "") if p)
        super().__init__(f"{where}: {message}" if where else message)
        self.notebook, self.cell, self.line = notebook, cell, line


@dataclass
class Region:
    kind: str                  # SOLUTION, HIDDEN or MARK_SCHEME
    label: str                 # text after BEGIN ..., without brackets ("" if none)
    indent: str                # indentation of the BEGIN line
    body: list[str]            # the lines inside (solution: without STUB lines)
    stub: list[str] = field(default_factory=list)      # STUB lines' code, indentation relative to the region
    answers: list[str] = field(default_factory=list)   # ANSWER TEXT declarations (hidden regions)
    line: int = 0              # 1-based line of the BEGIN marker


def _kind_of(line: str, which: int):
    for kind, words in _WORDS.items():
        if words[which] in line:
            return kind
    return None


def parse(source: str, *, notebook: str = "", cell: str = "") -> list:
    """A cell's source as a list of plain lines (str) and Regions, in order."""
    items: list = []
    region: Region | None = None
    for number, line in enumerate(source.split("\n"), start=1):
        begin, end = _kind_of(line, 0), _kind_of(line, 1)
        if begin:
            if region is not None:
                raise MarkupError(f"'{_WORDS[begin][0]}' inside an open {region.kind} region (regions do not nest; "
                                  f"the open one began on line {region.line})", notebook=notebook, cell=cell, line=number)
            label = line.split(_WORDS[begin][0], 1)[1].strip().strip("()").strip()
            region = Region(begin, label, re.match(r"\s*", line).group(0), [], line=number)
        elif end:
            if region is None or region.kind != end:
                raise MarkupError(f"'{_WORDS[end][1]}' without a matching '{_WORDS[end][0]}'",
                                  notebook=notebook, cell=cell, line=number)
            items.append(region)
            region = None
        elif region is None:
            if _STUB.match(line) or _ANSWER.match(line):
                raise MarkupError("a STUB or ANSWER TEXT line outside a region", notebook=notebook, cell=cell,
                                  line=number)
            items.append(line)
        elif region.kind == SOLUTION and _STUB.match(line):
            region.stub.append(_STUB.match(line).group(2))
        elif region.kind == HIDDEN and _ANSWER.match(line):
            text = _ANSWER.match(line).group(1)
            if not text:
                raise MarkupError("an empty ANSWER TEXT line", notebook=notebook, cell=cell, line=number)
            region.answers.append(text)
        elif _STUB.match(line) or _ANSWER.match(line):
            raise MarkupError(f"a STUB or ANSWER TEXT line inside a {region.kind} region", notebook=notebook,
                              cell=cell, line=number)
        else:
            region.body.append(line)
    if region is not None:
        raise MarkupError(f"'{_WORDS[region.kind][0]}' is never closed by '{_WORDS[region.kind][1]}'",
                          notebook=notebook, cell=cell, line=region.line)
    return items


def regions(source: str, kind: str | None = None, **where) -> list[Region]:
    return [i for i in parse(source, **where) if isinstance(i, Region) and (kind is None or i.kind == kind)]


def _indented(indent: str, lines: list[str]) -> list[str]:
    return [(indent + line) if line else "" for line in lines]


def render(source: str, *, solutions: str = "solution", replace: dict | None = None, keep: tuple = (),
           default_stub: str = CODE_STUB, default_label: str = "", **where) -> tuple[str, set]:
    """The cell's source with its regions resolved.

    Each solution region becomes its solution (``solutions="solution"``) or its stub (``"stub"``:
    the STUB lines, else ``default_stub``), except labels in ``replace``, whose code is put
    in its place at the region's indentation (an unlabelled region answers to
    ``default_label``). Hidden and mark-scheme regions are dropped unless
    their kind is in ``keep`` (then they stay, markers included). Returns (source, labels used).
    """
    replace = replace or {}
    out, used = [], set()
    for item in parse(source, **where):
        if isinstance(item, str):
            out.append(item)
        elif item.kind != SOLUTION:
            if item.kind in keep:
                begin, end = _WORDS[item.kind]
                out += [f"{item.indent}### {begin}"] + [f"{item.indent}### ANSWER TEXT: {a}" for a in item.answers]
                out += item.body + [f"{item.indent}### {end}"]
        elif (item.label or default_label) in replace:
            used.add(item.label or default_label)
            out += _indented(item.indent, replace[item.label or default_label])
        elif solutions == "solution":
            out += item.body
        else:
            out += _indented(item.indent, item.stub or default_stub.split("\n"))
    return "\n".join(out), used


def split_hidden(source: str, **where) -> tuple[str, list[str]]:
    """(the cell without its hidden regions, each hidden region's code at its own indentation)."""
    visible, _ = render(source, **where)
    hidden = []
    for region in regions(source, HIDDEN, **where):
        cut = len(region.indent)
        hidden.append("\n".join(line[cut:] if line.startswith(region.indent) else line.lstrip()
                                for line in region.body))
    return visible, hidden


def secret_lines(source: str, kinds=(HIDDEN, MARK_SCHEME), **where) -> list[str]:
    """Stripped lines inside regions of these kinds that are long enough to count as a leak."""
    found = []
    for region in regions(source, **where):
        if region.kind in kinds:
            found += [l.strip() for l in region.body if len(l.strip()) >= SECRET_MIN_CHARS]
    return found


def normalise(text: str) -> str:
    """Whitespace collapsed, for comparing answer texts with released text."""
    return " ".join(text.split())


def contains_marker(text: str) -> str | None:
    """The first markup word found in a released text, if any."""
    for word in MARKER_WORDS:
        if word in text:
            return word
    return None


def runs_in_grader(hidden_source: str) -> bool:
    """Is this hidden region's first line GRADER_LINE (it runs in the grader process, never in the kernel)?"""
    lines = [ln for ln in hidden_source.splitlines() if ln.strip()]
    return bool(lines) and lines[0].strip() == GRADER_LINE
