"""Q3 through the real pipeline: each fixture scores exactly as expected."""
import pytest

from fixtures_q3_multihead_attention import FIXTURES, NB
from harness import assert_fixture, cleanup, grade_fixtures


@pytest.fixture(scope="module")
def graded():
    # A short per-cell timeout keeps the infinite-loop fixture quick (workers inherit it).
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ATTNKIT_CELL_TIMEOUT", "20")
        g = grade_fixtures(FIXTURES, [NB])
    yield g
    cleanup(g)


@pytest.mark.parametrize("fixture", FIXTURES, ids=[f.student for f in FIXTURES])
def test_fixture_scores_exactly(graded, fixture):
    assert graded.results[fixture.student]["notebooks"][0]["status"] == "graded"
    assert_fixture(graded, fixture)
