"""Q1/Q2 through the real pipeline: each fixture scores exactly as expected."""
from banks.hw9.q12_scaled_dot_product import FIXTURES
import pytest

from harness import bank, bank_test

pytestmark = pytest.mark.slow

graded = bank(FIXTURES, ["q12_scaled_dot_product"])
test_fixture_scores_exactly = bank_test(FIXTURES)
