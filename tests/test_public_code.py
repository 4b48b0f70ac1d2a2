"""Public implementations of Q3, Q4 and Q6 (banks/hw9/public_code.py) through the real pipeline: right ones
keep every point whatever their shape, wrong ones lose exactly their part and are told the mistake (slow)."""
import pytest

from banks.hw9.public_code import FIXTURES
from harness import bank, bank_test

graded = bank(FIXTURES, sorted({f.notebook for f in FIXTURES}))
test_fixture_scores_exactly = pytest.mark.slow(bank_test(FIXTURES))
