# nbgrader's own commands (and the formgrader) read this file; the course's settings
# live in course_config.py, the one configuration.
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
load_subconfig(os.path.join(os.path.dirname(os.path.abspath(__file__)), "course_config.py"))  # noqa: F821
