"""Fixture submissions, one per behaviour, graded through the real pipeline.

A Fixture is built from a source notebook: every solution region gets its solution
(``default="solution"``) or its student stub (``default="stub"``), except the regions
named in ``answers``, which get the code given there. ``expected`` lists the exact score
of every test cell that differs from the default (full marks for "solution", 0 for
"stub"); ``messages`` lists a substring the student must see in a cell's failure message.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional


@dataclass
class Fixture:
    student: str                     # unique student id across all fixtures
    notebook: str                    # notebook stem in source/hw9/
    answers: dict = field(default_factory=dict)
    default: str = "solution"           # "solution", "stub" (blanks as released) or "release" (the release copy)
    expected: dict = field(default_factory=dict)
    messages: dict = field(default_factory=dict)
    mutate: Optional[Callable] = None  # nb -> nb, for tampering and other edits
    raw: Optional[bytes] = None        # exact file contents instead (malformed notebooks)
    why: str = ""                      # the question the fixture asks, for test ids and reports
