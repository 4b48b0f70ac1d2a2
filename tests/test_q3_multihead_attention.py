"""Q3 through the real pipeline: each fixture scores exactly as expected."""
import pytest

from fixtures_q3_multihead_attention import FIXTURES, NB
from harness import assert_fixture, bank

graded = bank(FIXTURES, [NB])


@pytest.mark.parametrize("fixture", FIXTURES, ids=[f.student for f in FIXTURES])
def test_fixture_scores_exactly(graded, fixture):
    assert graded.results[fixture.student]["notebooks"][0]["status"] == "graded"
    assert_fixture(graded, fixture)
