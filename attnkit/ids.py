"""The one rule for student ids, and the LMS-id mapping that keeps to it.

A student id is a folder name (``submitted/<id>/``) and nbgrader's ``student_id``, which nbgrader's
CourseDirectory expands as a glob pattern: ``*`` as an id graded one student and rewrote every other
student's autograded notebooks. So an id holds only letters, digits and ``-_.@``; it does not start
with a dot (so never ``.`` or ``..``), holds no glob or path character, and is at most MAX_LEN long.
Every command checks ids against this rule before it hands them to nbgrader; nothing escapes them
(an escaped glob would name a folder literally, e.g. ``autograded/[*]/``).
"""
from __future__ import annotations

import hashlib
import unicodedata

MAX_LEN = 64
PUNCT = "-_.@"
RULE = f"letters, digits and {PUNCT} only, no leading dot, at most {MAX_LEN} characters"


def problem(sid) -> str | None:
    """Why ``sid`` breaks the rule (a sentence), or None if it keeps it."""
    if not isinstance(sid, str) or not sid:
        return "is empty"
    if len(sid) > MAX_LEN:
        return f"is longer than {MAX_LEN} characters"
    if sid.startswith("."):
        return "starts with a dot"
    # isalpha: letters of any script, but only composed ones (a combining accent is not a letter)
    bad = sorted({ch for ch in sid if not (ch.isalpha() or ch.isdecimal() or ch in PUNCT)})
    if bad:
        return "holds " + ", ".join(repr(ch) for ch in bad)
    if unicodedata.normalize("NFC", sid) != sid:
        return "is not in Unicode NFC form"
    return None


def is_valid(sid) -> bool:
    return problem(sid) is None


def refusal(sid) -> str | None:
    """The message for a refused id ('student id '..' starts with a dot (...)'), or None."""
    why = problem(sid)
    return None if why is None else f"student id {sid!r} {why} (student ids: {RULE})"


def from_lms(text: str) -> str:
    """An LMS id (SID, email) as a student id: itself if it keeps the rule; otherwise each other
    character becomes '_', and a short hash of the original is appended, so that two LMS ids
    never map to one student (``x`` vs ``.x``, ``a/b`` vs ``a_b``)."""
    text = str(text).strip()
    if is_valid(text):
        return text
    base = "".join(ch if (ch.isalpha() or ch.isdecimal() or ch in PUNCT) else "_" for ch in text)
    base = base.lstrip(".") or "_"
    digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:10]
    base = base[:MAX_LEN - len(digest) - 1]
    return f"{base}-{digest}"
