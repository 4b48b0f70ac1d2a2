"""CourseExecute: nbgrader's execution step, each kernel in the sandbox and hidden tests in the grader."""
from __future__ import annotations

import os
import shutil

from nbclient.exceptions import CellTimeoutError, DeadKernelError
from nbclient.util import run_sync
from nbformat import NotebookNode
from nbgrader.preprocessors import Execute
from traitlets import Bool, default, Dict, Integer

from attnkit.authoring import markup
from attnkit.authoring.notebooks import is_test_cell
from attnkit.sandbox.bwrap import isolated_copy
from attnkit.sandbox.manager import DIAGNOSES_DEFAULT, CourseKernelManager, KERNEL_DIED, MAX_MESSAGE, TIMEOUT_NAMES


class CourseExecute(Execute):
    """nbgrader's Execute, in the course kernel (sandboxed), surviving kernel deaths."""

    max_kernel_restarts = Integer(10, help="Kernel deaths tolerated in one notebook.").tag(config=True)
    student_timeout = Integer(0, help="Wall-clock seconds for all of one student's grading (attnkit.batch.workers stops "
                              "it and scores what is left 0); 0 = the per-cell timeout x the code cells + "
                              "120 s per notebook.").tag(config=True)
    grader_memory_mb = Integer(3072, help="RLIMIT_DATA (soft) of each grading process, MiB: what decoding a kernel's "
                               "replies and running the hidden tests may take; over it the notebook fails as "
                               "could-not-be-graded and the batch goes on. 0 = none.").tag(config=True)
    store_widget_state = Bool(False, help="Grading keeps no widget state (a notebook could flood it).")
    diagnoses = Bool(DIAGNOSES_DEFAULT, help="A failed part's message names the likely mistake (a known wrong variant its output "
                     "matches); False leaves it out (some staff publish diagnoses after the deadline). Gradescope "
                     "grades with the same configuration.").tag(config=True)
    graders = Dict(help="assignment -> its grader-only helper file (relative to the course folder), whose names "
                   "every hidden region of that assignment starts with (attnkit/grader/hidden.py).").tag(config=True)
    grader_file = None   # this notebook's assignment's (set by preprocess)
    _caps = None   # CapOutputs, applied to each output as it arrives
    _cell_budget = None

    @default("shutdown_kernel")
    def _kill_when_done(self):
        # The outputs are read before the kernel stops and its state is thrown away: a graceful
        # shutdown only waits (~1 s a notebook); SIGKILL to bwrap ends its whole PID namespace.
        return "immediate"

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("kernel_manager_class", CourseKernelManager)
        super().__init__(*args, **kwargs)

    def preprocess(self, nb, resources=None, km=None):
        """Run the notebook in a scratch folder outside the course (a copy of the files beside
        the notebook); in the sandbox those copies are bound read-only into the kernel's tmpfs."""
        self._replayable: list[int] = []
        self._restarts = 0
        resources = resources if resources is not None else {}
        meta = resources.setdefault("metadata", {})
        rel = self.graders.get(resources.get("nbgrader", {}).get("assignment"))
        root = self.config.get("CourseDirectory", {}).get("root") or os.getcwd()
        self.grader_file = os.path.join(root, rel) if rel else None
        if self.grader_file and not os.path.isfile(self.grader_file):  # never graded without its hidden checks
            raise FileNotFoundError(f"CourseExecute.graders names {rel} for this assignment; there is no such file")
        workdir = isolated_copy(meta.get("path") or os.getcwd())
        original, meta["path"] = meta.get("path"), workdir
        from attnkit.preprocessors.cap_outputs import CapOutputs

        self._caps = CapOutputs(config=self.config)
        self._notebook_budget = self._caps.arriving()
        try:
            return super().preprocess(nb, resources, km=km)
        finally:
            meta["path"] = original
            shutil.rmtree(workdir, ignore_errors=True)

    async def async_execute_cell(self, cell, cell_index, execution_count=None, store_history=True):
        """A test cell whose hidden regions run in the grader (attnkit/grader/): its visible part runs
        here in the kernel, then, if that passed, the hidden regions in this process."""
        graded_here = []
        if is_test_cell(cell) and cell.cell_type == "code":
            visible, regions = markup.split_hidden(cell.source)
            graded_here = [r for r in regions if markup.runs_in_grader(r)]
        if not graded_here:
            return await self._execute_in_kernel(cell, cell_index, execution_count, store_history)
        full = cell.source
        cell.source = visible
        try:
            result = await self._execute_in_kernel(cell, cell_index, execution_count, store_history)
        finally:
            cell.source = full
        if any(o.output_type == "error" for o in cell.outputs):
            return result
        # the grading process only (torch: 150 MB a process); the batch loads it in a thread as the process starts,
        # so a cell waits for it here, at its first hidden region, not before the first cell runs
        from attnkit.grader import channel

        died = await channel.run_hidden_regions(self, cell, graded_here, self.resources["metadata"]["path"])
        if died:
            self._restarts += 1
            if self._restarts > self.max_kernel_restarts:
                raise DeadKernelError("the kernel kept dying")
            await self._restart_and_replay()
        return result

    # -- outputs capped as they arrive (CapOutputs.admit): a flood never piles up in this process
    def output(self, outs, msg, display_id, cell_index):
        if self._caps is not None and not msg.pop("_attnkit_admitted", False):
            if not self._caps.admit(msg["msg_type"], msg["content"], self._budget()):
                return None
        return super().output(outs, msg, display_id, cell_index)

    def _update_display_id(self, display_id, msg):
        # nbclient copies an update (or a new display with the same id) into earlier outputs: capped first
        if self._caps is not None:
            budget = self._caps.cell_budget(self._notebook_budget) if msg["msg_type"] == "update_display_data" \
                else self._budget()
            if not self._caps.admit(msg["msg_type"], msg["content"], budget):
                return
            msg["_attnkit_admitted"] = True
        super()._update_display_id(display_id, msg)

    def handle_comm_msg(self, outs, msg, cell_index):
        """No widgets in grading: a notebook's comm messages are dropped (their state would pile up here)."""

    def _budget(self) -> dict:
        if self._cell_budget is None:
            self._cell_budget = self._caps.cell_budget(self._notebook_budget)
        return self._cell_budget

    async def _execute_in_kernel(self, cell, cell_index, execution_count=None, store_history=True):
        self._cell_budget = None
        try:
            try:
                result = await super().async_execute_cell(cell, cell_index, execution_count, store_history)
            finally:
                note = self._caps.cut_note(self._cell_budget) if self._caps and self._cell_budget else None
                if note is not None and cell.cell_type == "code":
                    cell.setdefault("outputs", []).append(note)
        except CellTimeoutError:
            if not (self.kc is not None and self.kc.iopub_lost()):
                raise
            # An output message over MAX_MESSAGE: it and what followed it (this cell's error too, if any) are
            # lost. The cell is marked failed, so a test cell never passes for want of its error output.
            self.kc.reconnect_iopub()
            await self.kc.wait_for_ready(timeout=60)  # the new connection delivers before the next cell runs
            cell.outputs.append(NotebookNode(
                output_type="error", ename="OutputTooLarge", traceback=[],
                evalue=f"one output message of this cell was over {MAX_MESSAGE:,} bytes: it and the rest of the "
                       f"cell's output were dropped (each cell keeps {self._caps.max_cell_bytes:,} bytes of text)"))
            return cell
        except DeadKernelError:
            cell.outputs.append(NotebookNode(
                output_type="error", ename=KERNEL_DIED, traceback=[],
                evalue=f"{self.km.death_message('running this cell')}; it was restarted and the earlier cells were "
                       "run again"))
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
