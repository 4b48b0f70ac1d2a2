"""The protocol bank (attnkit/fixtures/protocol.py) graded through the CLI in one batch: replies that would make the
grader compute, nested deeply, too wide, flooded, replayed or forged, $randn in a callback's arguments, and a patched
inspect.getsource each fail only their own tests, beside honest submissions that keep their exact scores."""
from __future__ import annotations

import pytest

from attnkit.fixtures.protocol import NOTEBOOKS, PROTOCOL
from harness import bank, bank_test

graded = bank(PROTOCOL, NOTEBOOKS)
test_fixture_scores_exactly = pytest.mark.slow(bank_test(PROTOCOL))


@pytest.mark.slow
def test_the_batch_went_on_and_every_notebook_was_graded(graded):
    """Did every submission of the batch end graded (no grading process died, none could-not-be-graded)?"""
    statuses = {fx.student: [n.status for n in graded.results[fx.student].notebooks] for fx in PROTOCOL}
    assert all(s == ["graded"] for s in statuses.values()), statuses
