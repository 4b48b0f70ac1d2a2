import pytest
from fixtures_q12_scaled_dot_product import FIXTURES
from harness import assert_fixture, cleanup, grade_fixtures


@pytest.fixture(scope="module")
def graded():
    result = grade_fixtures(FIXTURES, notebooks=["q12_scaled_dot_product"])
    yield result
    cleanup(result)


@pytest.mark.parametrize("fixture", FIXTURES, ids=[f.student for f in FIXTURES])
def test_fixture(graded, fixture):
    assert_fixture(graded, fixture)
