"""Q4 through the real pipeline: each fixture scores exactly as expected."""
from banks.hw9.q4_multiquery_attention import FIXTURES
import pytest

from harness import bank, bank_test

pytestmark = pytest.mark.slow

graded = bank(FIXTURES, ["q4_multiquery_attention"])
test_fixture_scores_exactly = bank_test(FIXTURES)
