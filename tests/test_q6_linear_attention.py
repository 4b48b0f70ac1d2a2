"""Q6 through the real pipeline: each fixture scores exactly as expected."""
from banks.hw9.q6_linear_attention import FIXTURES
import pytest

from harness import bank, bank_test

pytestmark = pytest.mark.slow

graded = bank(FIXTURES, ["q6_linear_attention"], cell_timeout="60")  # timing cells need room on a loaded machine
test_fixture_scores_exactly = bank_test(FIXTURES)

