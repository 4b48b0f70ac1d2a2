"""nbgrader preprocessors that close nbgrader's grading traps (README: "How grading avoids nbgrader's traps").

* ClearSolutionsWithStubs - a solution region may carry its own stub (``### STUB: ...``
  lines), so students see the homework's skeleton with labelled blanks instead of a bare
  ``raise NotImplementedError()`` that hides the code around the blank.
* ScoreOnlyErrors - a test cell is scored by "did it raise?" alone: stderr text (library
  warnings) no longer zeroes it, and a value it happens to display is never read as a score.
* ScrubTestOutputs - feedback shows ``ename: evalue`` for test cells, never the traceback
  lines, which quote hidden test source.
* CourseExecute - runs every notebook in the course's kernel (whatever the kernelspec
  says), under a memory limit, and survives a kernel death: the dying cell gets an error,
  the kernel restarts, earlier set-up and answer cells are replayed, grading goes on.
"""
from __future__ import annotations

import os
import shutil
import sys
import tempfile

from jupyter_client.kernelspec import KernelSpec
from jupyter_client.manager import AsyncKernelManager
from nbclient.exceptions import DeadKernelError
from nbclient.util import run_sync
from nbformat import NotebookNode
from attnkit import markup
from attnkit import notebooks as nbu
from attnkit.notebooks import is_test_cell
from nbgrader.preprocessors import ClearSolutions, DeduplicateIds, Execute, NbGraderPreprocessor
from traitlets import Bool, Integer, Unicode

TIMEOUT_NAMES = {"CellTimeoutError", "KeyboardInterrupt"}
KERNEL_DIED = "KernelDied"


class ClearSolutionsWithStubs(ClearSolutions):
    """Replace each ``### BEGIN SOLUTION`` region by its own stub when it has one.

    Source::

        ### BEGIN SOLUTION (a)
        self.W_k = nn.Linear(d_model, d_model)
        ### STUB: self.W_k = nn.Linear(d_model, _____)  # (a)
        ### END SOLUTION

    Release::

        self.W_k = nn.Linear(d_model, _____)  # (a)

    A region without ``### STUB:`` lines gets nbgrader's usual code or text stub.
    """

    def preprocess(self, nb, resources):
        self._where = {"notebook": resources.get("unique_key", "")}
        return super().preprocess(nb, resources)

    def _replace_solution_region(self, cell, language):
        stub = self.code_stub[language] if cell.cell_type == "code" else self.text_stub
        where = dict(getattr(self, "_where", {}), cell=nbu.grade_id(cell) or "")
        if not markup.regions(cell.source, markup.SOLUTION, **where):
            return False
        cell.source, _ = markup.render(cell.source, solutions="stub", keep=(markup.HIDDEN, markup.MARK_SCHEME),
                                       default_stub=stub, **where)
        return True


class DropDuplicateIds(DeduplicateIds):
    """nbgrader's DeduplicateIds, finished: a copied or split cell loses its nbgrader metadata.

    nbgrader leaves ``nbgrader: {}`` on the copy, and OverwriteCells (add_missing_cells) then
    fails with KeyError 'grade_id', so a duplicated cell used to cost the whole notebook.
    """

    def preprocess(self, nb, resources):
        nb, resources = super().preprocess(nb, resources)
        for cell in nb.cells:
            meta = cell.metadata.get("nbgrader")
            if meta is not None and "grade_id" not in meta:
                del cell.metadata["nbgrader"]
        return nb, resources


class ScoreOnlyErrors(NbGraderPreprocessor):
    """Make a test cell's score depend only on whether it raised.

    nbgrader zeroes a test cell that wrote anything to stderr and reads its first
    displayed value as a partial score (a bare ``False`` even scores full marks).
    Run before SaveAutoGrades: stderr text becomes stdout text (still shown) and
    displayed values become plain display data (still shown, never scored).
    """

    def preprocess_cell(self, cell, resources, cell_index):
        if is_test_cell(cell):
            for out in cell.get("outputs", []):
                if out.output_type == "stream" and out.name == "stderr":
                    out.name = "stdout"
                elif out.output_type == "execute_result":
                    out.output_type = "display_data"
                    out.pop("execution_count", None)
        return cell, resources


class ScrubTestOutputs(NbGraderPreprocessor):
    """For feedback: a test cell shows only ``ename: evalue`` of its error.

    Tracebacks quote hidden test lines, and a student's function could print the calling
    test's source; so test cells keep no other output, and any hidden-test line that
    still appears in an error message is redacted.
    """

    def preprocess_cell(self, cell, resources, cell_index):
        if is_test_cell(cell):
            hidden = markup.secret_lines(cell.source, (markup.HIDDEN,))
            kept = []
            for out in cell.get("outputs", []):
                if out.output_type == "error":
                    text = f"{out.ename}: {out.evalue}"
                    for line in hidden:
                        text = text.replace(line, "[hidden test]")
                    out.traceback = [text]
                    out.evalue = text.split(": ", 1)[1] if ": " in text else ""
                    kept.append(out)
            cell.outputs = kept
        return cell, resources


def isolated_copy(folder: str) -> str:
    """A fresh folder in the system temp dir with copies of ``folder``'s files (not notebooks)."""
    workdir = tempfile.mkdtemp(prefix="attnkit-kernel-")
    for name in os.listdir(folder):
        src = os.path.join(folder, name)
        if os.path.isfile(src) and not name.endswith(".ipynb"):
            shutil.copy(src, os.path.join(workdir, name))
    os.chmod(workdir, 0o777)  # the kernel may run as another user; the folder is its own
    for name in os.listdir(workdir):
        os.chmod(os.path.join(workdir, name), 0o644)
    return workdir


class CourseKernelManager(AsyncKernelManager):
    """Always start the course's Python kernel, whatever kernelspec the notebook names."""

    hide_secrets = Bool(True, help="Hide the course's source, submissions and gradebook from the kernel "
                                   "(a private mount namespace; needs root on Linux, skipped elsewhere).").tag(config=True)
    memory_limit_mb = Integer(
        4096, help="Address-space-free data limit (RLIMIT_DATA) of a grading kernel, in MiB; 0 = none."
    ).tag(config=True)
    threads = Integer(1, help="Torch/BLAS threads in a grading kernel (0 = library default).").tag(config=True)
    display_name = Unicode("Python 3 (attention kit)").tag(config=True)

    def secret_paths(self) -> list[str]:
        """What code under test must not read: the source/, submitted/, autograded/, feedback/,
        reports/ and gradebook files of the graded course, the kit's checkout and scratch courses."""
        roots = {os.path.dirname(os.path.dirname(os.path.abspath(__file__)))}
        try:
            root = self.config.CourseDirectory.root
            if isinstance(root, str) and root:
                roots.add(os.path.abspath(root))
        except Exception:
            pass
        # scratch courses (./kit check, the kit's tests) live in the temp dir
        tmp = tempfile.gettempdir()
        roots |= {os.path.join(tmp, d) for d in os.listdir(tmp) if d.startswith("attnkit-")}
        out = []
        for root in sorted(roots):
            if not os.path.isfile(os.path.join(root, "course_config.py")):
                continue
            out += [os.path.join(root, d) for d in ("source", "submitted", "autograded", "feedback", "reports")]
            out += [os.path.join(root, f) for f in os.listdir(root) if f.startswith("gradebook.db")]
        return out

    @property
    def kernel_spec(self):  # type: ignore[override]
        env = {"ATTNKIT_KERNEL_MEMORY_MB": str(self.memory_limit_mb), "PYTHONWARNINGS": "default",
               "ATTNKIT_KERNEL_HIDE": os.pathsep.join(self.secret_paths()) if self.hide_secrets else ""}
        if self.threads:
            env.update({k: str(self.threads) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")})
        return KernelSpec(
            argv=[sys.executable, "-m", "attnkit.kernel", "-f", "{connection_file}"],
            display_name=self.display_name,
            language="python",
            env=env,
        )


class CourseExecute(Execute):
    """nbgrader's Execute, in the course kernel, surviving kernel deaths."""

    max_kernel_restarts = Integer(10, help="Kernel deaths tolerated in one notebook.").tag(config=True)

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("kernel_manager_class", CourseKernelManager)
        super().__init__(*args, **kwargs)

    def preprocess(self, nb, resources=None, km=None):
        """Run the notebook in a scratch folder outside the course (a copy of the files beside
        the notebook), so code under test cannot reach source/, other submissions or the
        gradebook by walking up from its working directory."""
        self._replayable: list[int] = []
        self._restarts = 0
        resources = resources if resources is not None else {}
        meta = resources.setdefault("metadata", {})
        workdir = isolated_copy(meta.get("path") or os.getcwd())
        original, meta["path"] = meta.get("path"), workdir
        try:
            return super().preprocess(nb, resources, km=km)
        finally:
            meta["path"] = original
            shutil.rmtree(workdir, ignore_errors=True)

    async def async_execute_cell(self, cell, cell_index, execution_count=None, store_history=True):
        try:
            result = await super().async_execute_cell(cell, cell_index, execution_count, store_history)
        except DeadKernelError:
            cell.outputs.append(NotebookNode(
                output_type="error", ename=KERNEL_DIED,
                evalue="the Python kernel died while running this cell (os._exit, a crash, or too much memory); "
                       "it was restarted and the earlier cells were run again",
                traceback=[]))
            self._restarts += 1
            if self._restarts > self.max_kernel_restarts:
                raise
            await self._restart_and_replay()
            return cell
        timed_out = cell.cell_type == "code" and any(
            o.output_type == "error" and o.get("ename") == "CellTimeoutError" for o in cell.outputs)
        if timed_out:  # one clear message instead of a KeyboardInterrupt traceback
            cell.outputs = [o for o in cell.outputs if o.output_type != "error"] + [NotebookNode(
                output_type="error", ename="CellTimeoutError",
                evalue=f"stopped after {self.timeout} s: the code this cell runs did not finish (an infinite loop?)",
                traceback=[])]
        elif cell.cell_type == "code" and not is_test_cell(cell) and not any(
                o.output_type == "error" and o.get("ename") in TIMEOUT_NAMES for o in cell.outputs):
            self._replayable.append(cell_index)
        return result

    # nbclient binds the sync wrapper to its own coroutine; rebind it to ours.
    execute_cell = run_sync(async_execute_cell)

    async def _restart_and_replay(self):
        self.log.warning("Kernel died; restarting it and replaying %d cells", len(self._replayable))
        try:
            if self.kc is not None:
                self.kc.stop_channels()
        except Exception:  # the channels of a dead kernel may already be gone
            pass
        await self.km.restart_kernel(now=True)
        await self.async_start_new_kernel_client()
        for index in self._replayable:
            source = self.nb.cells[index].source
            msg_id = self.kc.execute(source, store_history=False, stop_on_error=False, silent=True)
            await self.async_wait_for_reply(msg_id, self.nb.cells[index])
