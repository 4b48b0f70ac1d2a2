"""The protocol bank (banks/attacks/protocol.py) graded through the CLI in one batch: replies that would make the
grader compute, nested deeply, too wide, flooded, replayed or forged, $randn in a callback's arguments, and a patched
inspect.getsource each fail only their own tests, beside honest submissions that keep their exact scores."""
from __future__ import annotations

import pytest

from banks.attacks.protocol import NOTEBOOKS, PROTOCOL
from harness import bank_test, cleanup, grade_fixtures

PEAK_MB = 1024   # the grading processes' peak here is ~0.4 GB; before, one reply bomb alone drew 1.5 GB


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    log = tmp_path_factory.mktemp("peaks") / "peaks.log"   # each grading process's VmHWM after each student
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ATTNKIT_CELL_TIMEOUT", "20")
        mp.setenv("ATTNKIT_PEAK_LOG", str(log))
        g = grade_fixtures(PROTOCOL, NOTEBOOKS)
    g.peaks = {s: int(kb) // 1024 for s, kb in (line.split() for line in log.read_text().splitlines() if line.strip())}
    print("grading processes' peak memory (MB) after each student:", g.peaks)
    yield g
    cleanup(g)


test_fixture_scores_exactly = pytest.mark.slow(bank_test(PROTOCOL))


@pytest.mark.slow
def test_the_batch_went_on_and_the_grader_kept_its_memory(graded):
    """Did every submission end graded (no grading process died), and did no grading process peak over 1 GiB?"""
    statuses = {fx.student: [n.status for n in graded.results[fx.student].notebooks] for fx in PROTOCOL}
    assert all(s == ["graded"] for s in statuses.values()), statuses
    assert set(graded.peaks) == {fx.student for fx in PROTOCOL}, graded.peaks
    assert max(graded.peaks.values()) < PEAK_MB, graded.peaks
