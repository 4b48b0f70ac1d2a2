"""Old import path of ``autograde`` (now attnkit.batch.driver; one student's run is attnkit.batch.student); goes away
next release."""
from attnkit.batch.driver import autograde, ensure_assignment, refused_result  # noqa: F401
from attnkit.batch.student import grade_student  # noqa: F401
