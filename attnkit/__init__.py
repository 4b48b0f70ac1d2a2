"""attnkit: course tooling for the autograded attention homework (EECS 182 HW9).

The CLI (``python -m attnkit`` / ``./kit``) wraps nbgrader with fixes for its grading traps
(README, "How grading avoids nbgrader's traps"). The helper students receive lives in
``source/hw9/attention_checks.py``; grader-only code (the guard, hidden-test checks) lives here.
"""
__version__ = "0.1.0"

import warnings as _warnings

# nbgrader's gradebook triggers SQLAlchemy autoflush warnings that say nothing to course staff.
try:
    from sqlalchemy.exc import SAWarning as _SAWarning

    _warnings.filterwarnings("ignore", category=_SAWarning)
except ImportError:  # pragma: no cover
    pass
