"""nbgrader preprocessors, one per module, each closing one of nbgrader's traps
(docs/nbgrader-traps.md); the course config (course_config.py) names them. CourseExecute (execute.py) runs each
notebook's kernel in the grading sandbox and its hidden tests in the grading process; sanitise.py cleans the HTML
of feedback. Host side: nothing here runs in a kernel.
"""
from __future__ import annotations

from attnkit.course import nbgrader_in_process

nbgrader_in_process()  # (every nbgrader app loads the course config, which imports this package)
