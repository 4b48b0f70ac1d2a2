"""Hidden tests out of reach (since the grader process): the exfiltration and re-patching bank through the real CLI.

The bank (banks/attacks/exfiltrate.py) is graded in one batch with ``kit autograde`` in the sandbox,
then ``kit feedback``. Every case must score exactly what its answers deserve, and no text a student
sees (the feedback page, the failure messages that feedback and Gradescope show) may hold a hidden-test
line or a line of grader-only source, after any of the decodings the payloads use (zlib + base64, hex,
rot13, reversed; HTML-escaped or not)."""
from __future__ import annotations

import base64
import binascii
import codecs
import html
import re
import zlib
from pathlib import Path

import pytest

from attnkit.authoring import markup
from attnkit.authoring import notebooks as nbu
from banks.attacks.exfiltrate import FIXTURES
from banks.attacks.tamper import Q3
from harness import ASSIGNMENT, assert_fixture, kit
from test_sandbox import FAST, MODE, SANDBOXED, course_with, graded_from

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT / "source" / "hw9"
pytestmark = pytest.mark.slow


# ---------------------------------------------------------------------------- what must never be recovered
def secrets() -> list[str]:
    """Hidden-test lines of every notebook and the grader-only source (lines of attnkit/grader/ and the
    assignment's grader helper, graders/hw9.py), less any line that a file a student can read also holds (the release, the kernel-side
    modules bound into the sandbox: a hidden test may share a fragment with the public helper). Declared
    answers (ANSWER TEXT) are not here: a right submission holds them itself."""
    public = "\n".join(p.read_text() for p in [*(ROOT / "release" / "hw9").iterdir(),
                                                *(ROOT / "attnkit" / "kernel").glob("*.py"), ROOT / "attnkit" / "__init__.py"] if p.is_file())
    found = set(nbu.assignment_hidden_lines(sorted(SOURCE.glob("*.ipynb"))))
    for path in [*(ROOT / "attnkit" / "grader").glob("*.py"), *(ROOT / "graders").glob("*.py")]:
        found.update(line.strip() for line in path.read_text().splitlines() if len(line.strip()) >= 30)
    return sorted(line for line in found if line not in public)


def decodings(text: str) -> list[str]:
    """``text`` and everything the payloads' encodings of any part of it decode to."""
    text = html.unescape(text)
    out = [text, codecs.decode(text, "rot13"), text[::-1], text.replace(" | ", "\n")[::-1]]
    blobs = []
    for run in re.findall(r"[A-Za-z0-9+/]{24,}={0,2}", text):
        try:
            blobs.append(base64.b64decode(run + "=" * (-len(run) % 4)))
        except (binascii.Error, ValueError):
            pass
    for run in re.findall(r"(?:[0-9a-fA-F]{2}){12,}", text):
        blobs.append(bytes.fromhex(run))
    for blob in blobs:
        for data in (blob, _inflate(blob)):
            if data:
                decoded = data.decode("utf-8", "ignore")
                out += [decoded, codecs.decode(decoded, "rot13"), decoded[::-1]]
    return out


def _inflate(blob: bytes) -> bytes:
    try:
        return zlib.decompressobj().decompress(blob, 50_000_000)
    except zlib.error:
        return b""


def recovered(text: str, secret: list[str]) -> list[str]:
    found = []
    for variant in decodings(text):
        flat = variant.replace(" | ", "\n")
        found += [s for s in secret if s in flat]
    return sorted(set(found))


def test_the_decoder_finds_a_planted_secret():
    """Can the check fail: is a hidden line found under every encoding the payloads use?"""
    secret = secrets()
    line = next(s for s in secret if "assert_close" in s or "expect(" in s)
    data = ("x\n" + line + "\ny").encode()
    for encoded in (base64.b64encode(zlib.compress(data)).decode(), data.hex(), codecs.encode(data.decode(), "rot13"),
                    data.decode()[::-1], html.escape(data.decode())):
        assert line in recovered(f"<pre>before {encoded} after</pre>", secret), encoded[:40]
    assert len(secret) > 200  # hidden lines and grader source are both there


# ---------------------------------------------------------------------------- the batch
@pytest.fixture(scope="module")
def bank():
    if not SANDBOXED:
        pytest.skip(f"no grading sandbox here ({MODE})")
    course = course_with(FIXTURES)
    out = kit(course.root, "autograde", ASSIGNMENT, "--workers", "2", env=FAST, timeout=1500)
    fb = kit(course.root, "feedback", ASSIGNMENT, timeout=900)
    graded = graded_from(course) if course.path("reports").is_dir() else None
    yield course, out, fb, graded
    import shutil
    shutil.rmtree(course.root, ignore_errors=True)


def test_the_bank_is_graded(bank):
    """Does the batch finish (exit 0) with every case graded?"""
    course, out, fb, graded = bank
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert fb.returncode == 0, fb.stdout[-3000:] + fb.stderr[-3000:]
    for fx in FIXTURES:
        assert [n.status for n in graded.results[fx.student].notebooks] == ["graded"], graded.results[fx.student]


@pytest.mark.parametrize("fx", FIXTURES, ids=[f.student for f in FIXTURES])
def test_a_case_scores_what_its_answers_deserve(bank, fx):
    """Exfiltration costs nothing and gains nothing; re-patching keeps wrong (d) and (e) at 0."""
    assert_fixture(bank[3], fx)


@pytest.mark.parametrize("fx", FIXTURES, ids=[f.student for f in FIXTURES])
def test_nothing_secret_can_be_recovered_from_what_the_student_sees(bank, fx):
    """Feedback page and failure messages: no hidden-test line or grader source, under any decoding."""
    course, _, _, graded = bank
    secret = secrets()
    page = course.path("feedback", fx.student, ASSIGNMENT, f"{Q3}.html")
    assert page.exists(), f"no feedback page for {fx.student}"
    texts = [page.read_text(errors="replace"), *graded.messages.get(fx.student, {}).values()]
    leaked = [s for t in texts for s in recovered(t, secret)]
    assert not leaked, f"{fx.student}: recovered from what the student sees: {leaked[:3]}"


def test_the_payloads_ran(bank):
    """Did the exfiltration payloads actually print what they collected (so the check above saw it)?"""
    course = bank[0]
    for student in ("exfil-history", "exfil-gc-modules", "exfil-files", "exfil-hooks"):
        page = html.unescape(course.path("feedback", student, ASSIGNMENT, f"{Q3}.html").read_text(errors="replace"))
        label = student.split("-")[1].replace("gc", "modules")
        assert f"{label} b64" in page or f"{student.split('-')[1]} b64" in page, student
