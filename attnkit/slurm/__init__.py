"""Grade on a Slurm cluster (run.py, jobs.py, merging.py, node.py, command.py): one ``sbatch --array`` job over shards of the students, merged here.

``./kit autograde ASSIGNMENT --on slurm`` writes a run folder, ``slurm/<assignment>-<time>/`` under the course
(the course folder must be on a file system the compute nodes share, as home and project folders are on
campus clusters), and submits one array task per shard (a student is never split across tasks). Each task
(``python -m attnkit.slurm task RUN ROUND``) grades its shard with the local batch's own code path
(``attnkit.batch.driver.autograde``: the same sandbox, hidden tests, limits and messages) in a course copy in
node-local scratch ($SLURM_TMPDIR, $TMPDIR or /tmp), and writes each student, as they finish, to
``RUN/results/<student>/`` (their gradebook rows, autograded notebooks, logs), renamed into place whole.
The submitting command follows the array's task states, then merges every result into the course's
gradebook, one writer (a lock on ``slurm/merge.lock``) and one transaction per student. A task that failed,
timed out or was preempted is resubmitted once for its unfinished students; a student still ungraded after
that is "could not be graded: <the task's reason>", scored 0. Ctrl-C stops waiting and cancels nothing; the
same command (or ``--collect JOBID``) picks the run up again.
"""
from __future__ import annotations

from attnkit.slurm.command import cli  # noqa: F401  (./kit autograde --on slurm)
from attnkit.slurm.jobs import _expand, follow, submit, task_reason, task_states  # noqa: F401
from attnkit.slurm.merging import finish, merge  # noqa: F401
from attnkit.slurm.node import _scratch_base, copy_submission, task  # noqa: F401
from attnkit.slurm.run import Run, SlurmError, find_run, gpu_refusal, has_cuda, open_run, require_gpu, shards  # noqa: F401
