"""Grade one fixture bank in a scratch copy of this checkout's course and print the copy's folder (what
harness.bank starts in the background): ``bank_job.py MODULE:LIST WORKERS NOTEBOOK...``. A process of its
own, so that its environment (the cell timeout) and nbgrader's global state are the bank's alone."""
import importlib
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT)]  # the checkout's attnkit and banks/, whatever the working folder

from attnkit.fixtures.grade import grade_into_scratch  # noqa: E402

if __name__ == "__main__":
    ref, workers, *notebooks = sys.argv[1:]
    module, attr = ref.split(":")
    fixtures = getattr(importlib.import_module(module), attr)
    course = grade_into_scratch(fixtures, notebooks, int(workers), root=ROOT)
    print(course.root)
