"""attnkit: course tooling for autograded Jupyter homework (nbgrader, hidden tests run in a separate grader).

The CLI (``python -m attnkit`` / ``./kit``) wraps nbgrader with fixes for its grading traps
(README, "How grading avoids nbgrader's traps"). The package knows no assignment: the course folder holds
each assignment's notebooks and helper (``source/<assignment>/``), its grader-only helper (``graders/``,
named in course_config.py) and its fixture banks (``banks/``). Which process a module runs in: attnkit/grader/ in the grader
(never bound into the sandbox); attnkit/kernel/ in the student's kernel (sandbox.KERNEL_MODULES, readable
by students); everything else in the instructor's or grading process.
"""
__version__ = "0.1.0"

import sys as _sys

# jsonschema (under nbformat, so under every kit process) imports rfc3987_syntax when it is
# installed, for two URI string formats that no notebook schema uses; that import builds a parser
# and takes 0.9 s of CPU in every process. Without it jsonschema skips just those two formats.
_sys.modules.setdefault("rfc3987_syntax", None)
# (Nothing heavy here: every kit process imports this package, the kernels in the sandbox too. SQLAlchemy's
# warnings are silenced where nbgrader's gradebook is set up: attnkit.course.nbgrader_in_process.)


def switched_on(name: str) -> bool:
    """Is the kit's switch ``name`` (an environment variable: ATTNKIT_WARM_START, ATTNKIT_FORK_WORKERS, ...) on?
    Unset is on; 0, false, no or off is off."""
    import os

    return os.environ.get(name, "1").strip().lower() not in ("0", "false", "no", "off")
