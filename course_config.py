# The one nbgrader configuration of the course. nbgrader ignores --config, so the kit
# (./kit, python -m attnkit) loads this file itself; nbgrader_config.py loads it too, for
# nbgrader's own CLI and the formgrader.
from attnkit.preprocessors.cap_outputs import CapOutputs
from attnkit.preprocessors.metadata import CheckCellMetadataOnce
from attnkit.preprocessors.clear_solutions import ClearSolutionsWithStubs
from attnkit.preprocessors.dedupe import DropDuplicateIds
from attnkit.preprocessors.untouched import NameUntouchedParts
from attnkit.preprocessors.normalise import NormaliseSubmission
from attnkit.preprocessors.save_grades import SaveAutoGradesOnce
from attnkit.preprocessors.score_only_errors import ScoreOnlyErrors
from attnkit.preprocessors.scrub import ScrubTestOutputs
from attnkit.preprocessors.execute import CourseExecute
from attnkit.package import templates_dir
from attnkit.preprocessors.sanitise import SanitiseNotebook
from nbconvert.preprocessors import ClearMetadataPreprocessor, CSSHTMLHeaderPreprocessor
from nbgrader.preprocessors import (AssignLatePenalties, CheckCellMetadata, ClearHiddenTests,
                                    ClearMarkScheme, ClearOutput, ComputeChecksums,
                                    GetGrades, IgnorePattern, IncludeHeaderFooter, InstantiateTests,
                                    LimitOutput, LockCells, OverwriteKernelspec,
                                    SaveCells)

c = get_config()  # noqa: F821 (provided by traitlets when it loads this file)

c.CourseDirectory.course_id = "eecs182-hw9"
# The kit does not use nbgrader's exchange; a course-local folder keeps it from
# complaining about /usr/local/share/nbgrader/exchange on every command. It must exist: the
# formgrader (NbGraderAPI, on every page) warns "The exchange directory ... does not exist" otherwise.
c.Exchange.root = __import__("os").path.join(__import__("os").path.dirname(__file__), "exchange")  # noqa: F821
try:
    __import__("os").makedirs(c.Exchange.root, exist_ok=True)
except OSError:  # a read-only course folder: nbgrader then warns, as it would anyway
    pass

# Release: solution regions may carry their own stubs (the homework's labelled blanks).
c.GenerateAssignment.preprocessors = [
    IncludeHeaderFooter, InstantiateTests, LockCells, ClearSolutionsWithStubs, ClearOutput,
    CheckCellMetadata, ComputeChecksums, SaveCells, ClearHiddenTests, ClearMarkScheme,
    ComputeChecksums, CheckCellMetadata,
]
# Mark schemes live in the locked question cell before a written answer.
c.ClearMarkScheme.enforce_metadata = False

# Autograde: deleted test cells come back; the course kernel runs every notebook; a test
# cell's score depends only on whether it raised.
# NormaliseSubmission (an OverwriteCells): tags, nbgrader flags and points, language info come from
# the gradebook, never from the submission (a `skip-execution` tag used to skip a test cell and score it full).
c.NormaliseSubmission.add_missing_cells = True
# (CheckCellMetadataOnce: nbgrader's CheckCellMetadata, the metadata schema checked once, not per cell)
c.Autograde.sanitize_preprocessors = [
    ClearOutput, DropDuplicateIds, OverwriteKernelspec, NormaliseSubmission, CheckCellMetadataOnce,
]
c.Autograde.autograde_preprocessors = [
    CourseExecute, CapOutputs, IgnorePattern, ClearMetadataPreprocessor, LimitOutput, SanitiseNotebook,
    ScoreOnlyErrors, NameUntouchedParts, SaveAutoGradesOnce, AssignLatePenalties, CheckCellMetadataOnce,
]
import os  # noqa: E402

# Seconds per cell; an infinite loop is interrupted. (The kit's own tests shorten it.)
c.Execute.timeout = int(os.environ.get("ATTNKIT_CELL_TIMEOUT", "60"))
c.Execute.interrupt_on_timeout = True  # ... and the rest of the notebook still runs
# Wall-clock seconds for all of one student's grading; past it the student is stopped, the rest scored 0 with
# the reason. 0 = the per-cell timeout x the assignment's code cells + 120 s per notebook.
c.CourseExecute.student_timeout = int(os.environ.get("ATTNKIT_STUDENT_TIMEOUT", "0"))
# Every cell runs: no tag skips one (NormaliseSubmission already drops the submission's tags).
c.Execute.skip_cells_with_tag = "attnkit: no cell is ever skipped"
c.Execute.allow_error_names = []
# A failed part's message names the likely mistake when its output matches a known wrong variant (never an input
# or the answer); False leaves diagnoses out, e.g. until the deadline has passed. Gradescope follows this setting.
c.CourseExecute.diagnoses = True
# Each assignment's grader-only helper (references, part tables, known wrong variants): its names start every hidden
# region of that assignment. Beside source/, so nbgrader never releases it, and the sandbox never binds it.
c.CourseExecute.graders = {"hw9": "graders/hw9.py"}
c.CourseKernelManager.memory_limit_mb = 4096  # RLIMIT_DATA, per process
# each kernel's memory cgroup, where the host offers one writable: all its processes, memfd included
c.CourseKernelManager.cgroup_memory_mb = 5120
c.CourseKernelManager.threads = 1      # workers run side by side; timing tests expect 1 thread
# Every kernel runs in the grading sandbox (attnkit/sandbox.py; README "The grading sandbox"):
# auto = ATTNKIT_SANDBOX if set, else bwrap where it works, else the setpriv fallback (root), else none
# (./kit autograde then refuses real submissions without --unsandboxed-i-accept-the-risk).
c.CourseKernelManager.sandbox = "auto"
c.CourseKernelManager.max_processes = 256  # per worker slot's uid, threads included (fork bombs)
c.CourseKernelManager.max_file_mb = 256    # largest file written (disk fill)
c.CourseKernelManager.scratch_mb = 256     # the kernel's writable working folder (tmpfs)
c.CourseKernelManager.cpu_seconds = 900    # CPU seconds per kernel process, on top of the per-cell timeout
c.LimitOutput.max_lines = 200
# ... and in bytes (CapOutputs): 1 MiB of text per cell, 2 MiB per image, 16 MiB of outputs per notebook
c.CapOutputs.max_cell_bytes = 1 << 20
c.CapOutputs.max_image_bytes = 2 << 20
c.CapOutputs.max_notebook_bytes = 16 << 20

# Feedback: no hidden tests, no mark schemes, no tracebacks that quote them.
c.GenerateFeedback.preprocessors = [
    GetGrades, ScrubTestOutputs, ClearHiddenTests, ClearMarkScheme, SanitiseNotebook, CSSHTMLHeaderPreprocessor,
]
# Every page nbconvert renders here (feedback, the formgrader's submission view) is sanitised: outputs
# again, markdown through nh3 (attnkit/preprocessors/sanitise.py; mark schemes shown to graders as a labelled box);
# MathJax from the kit's copy (attnkit/templates/base/mathjax.html.j2), never a CDN.
c.HTMLExporter.preprocessors = ["attnkit.preprocessors.sanitise.SanitiseNotebook"]
c.HTMLExporter.filters = {"markdown2html": "attnkit.preprocessors.sanitise.markdown2html"}
c.HTMLExporter.extra_template_basedirs = [  # the kit's template first, then nbgrader's (feedback, formgrade)
    str(templates_dir()),
    os.path.join(os.path.dirname(__import__("nbgrader").__file__), "server_extensions", "formgrader", "templates"),
]
