"""CapOutputs: outputs capped in bytes (text per cell, each image, the whole notebook), not in lines."""
from __future__ import annotations

import json

from nbformat import NotebookNode
from nbgrader.preprocessors import NbGraderPreprocessor
from traitlets import Integer

from attnkit.authoring.notebooks import is_test_cell


class CapOutputs(NbGraderPreprocessor):
    """Outputs capped in bytes, not lines (after execution, before the grades are saved).

    LimitOutput counts lines: one line of 1 GiB, or a 500 MiB image, passed it whole into the autograded
    notebook and the feedback. Here each code cell keeps at most ``max_cell_bytes`` of text (stream,
    text/* data, error messages), an image over ``max_image_bytes`` is replaced by a note, and the notebook
    keeps at most ``max_notebook_bytes`` of outputs (the biggest answer-cell outputs go first; a test cell
    keeps its error, which is its score). What is cut is said in the output, with its size.
    """

    max_cell_bytes = Integer(1 << 20, help="bytes of text outputs kept per code cell").tag(config=True)
    max_image_bytes = Integer(2 << 20, help="bytes of one image output kept (base64)").tag(config=True)
    max_notebook_bytes = Integer(16 << 20, help="bytes of outputs kept per notebook").tag(config=True)

    def preprocess(self, nb, resources):
        for cell in nb.cells:
            if cell.cell_type == "code":
                cell.outputs = self._cap_cell(cell.get("outputs", []))
        total = sum(self._size(c) for c in nb.cells if c.cell_type == "code")
        for cell in sorted((c for c in nb.cells if c.cell_type == "code" and not is_test_cell(c)),
                           key=self._size, reverse=True):
            if total <= self.max_notebook_bytes:
                break
            size = self._size(cell)
            cell.outputs = [NotebookNode(output_type="stream", name="stdout",
                                         text=f"[{size:,} bytes of output removed: the notebook's outputs are capped "
                                              f"at {self.max_notebook_bytes:,} bytes]\n")]
            total -= size
        return nb, resources

    @staticmethod
    def _size(cell) -> int:
        return sum(len(json.dumps(o)) for o in cell.get("outputs", []))

    # -- as outputs arrive (CourseExecute.output): the same caps, applied to each message before it is
    # kept, so that a flood never piles up in the grading process. The pass above still runs after.
    NOTE_ROOM = 256      # of a cell's text budget, kept for the note saying what was cut
    OUTPUT_COST = 64     # what one output costs at least: a million empty outputs are a flood too
    MAX_METADATA = 4096  # an output's metadata over this is dropped
    MAX_ERRORS = 3       # error outputs kept per cell (the first decides a test cell's score)
    MAX_TRACEBACK = 64 << 10  # characters of one error's traceback

    def arriving(self) -> dict:
        """The budget of one notebook, for ``admit``: outputs kept, in all, at most twice the notebook cap
        (this pass keeps the first ones; the pass after execution picks what the notebook keeps)."""
        return {"notebook_left": 2 * self.max_notebook_bytes}

    def cell_budget(self, notebook: dict) -> dict:
        return {"left": self.max_cell_bytes - self.NOTE_ROOM, "cut": 0, "notebook": notebook}

    def admit(self, msg_type: str, content: dict, budget: dict) -> bool:
        """Cap one output message's ``content`` in place; False: nothing of it is kept (counted as cut)."""
        nb = budget["notebook"]
        if msg_type == "error":  # a test cell's error is its score: the first ones kept, capped as below
            # ... but only MAX_ERRORS a cell (the kernel holds the session key: it can send any number)
            budget["errors"] = budget.get("errors", 0) + 1
            if budget["errors"] > self.MAX_ERRORS:
                budget["cut"] += 1
                return False
            content["ename"] = str(content.get("ename", ""))[:200]
            content["evalue"] = str(content.get("evalue", ""))[:4000]
            tb = content.get("traceback")
            lines, room = [], self.MAX_TRACEBACK
            for line in (tb[:200] if isinstance(tb, list) else []):
                line = str(line)[:min(4000, room)]
                if not line:
                    break
                lines.append(line)
                room -= len(line)
            content["traceback"] = lines
            size = len(content["ename"]) + len(content["evalue"]) + self.MAX_TRACEBACK - room + self.OUTPUT_COST
            budget["left"] -= size
            nb["notebook_left"] -= size
            return True
        if msg_type == "stream":
            text = content.get("text", "")
            text = text if isinstance(text, str) else ""
            keep = max(0, min(len(text), budget["left"], nb["notebook_left"]))
            budget["cut"] += len(text) - keep
            if keep == 0:
                return False
            content["text"] = text[:keep]
            budget["left"] -= keep + self.OUTPUT_COST
            nb["notebook_left"] -= keep + self.OUTPUT_COST
            return True
        if msg_type not in ("display_data", "execute_result", "update_display_data"):
            return True  # not an output (nbclient ignores it)
        data = content.get("data")
        if not isinstance(data, dict):
            return False
        meta = content.get("metadata")
        if meta and len(json.dumps(meta, default=str)) > self.MAX_METADATA:
            content["metadata"] = {}
        kept = 0
        for mime in list(data):
            value = data[mime]
            value = value if isinstance(value, str) else json.dumps(value, default=str)
            size = len(value)
            if mime.startswith("image/"):
                if size > self.max_image_bytes or size > nb["notebook_left"]:
                    del data[mime]
                    why = (f"images are capped at {self.max_image_bytes:,} bytes" if size > self.max_image_bytes
                           else f"the notebook's outputs are capped at {self.max_notebook_bytes:,} bytes")
                    data["text/plain"] = f"[an image of {size:,} bytes was removed: {why}]"
                    continue
                nb["notebook_left"] -= size
                kept += size
                continue
            keep = max(0, min(size, budget["left"], nb["notebook_left"]))
            budget["cut"] += size - keep
            if keep < size or budget["left"] <= 0 or nb["notebook_left"] <= 0:
                if isinstance(data[mime], str) and keep > 0:
                    data[mime] = value[:keep]
                else:
                    del data[mime]
                    continue
            budget["left"] -= keep
            nb["notebook_left"] -= keep
            kept += keep
        budget["left"] -= self.OUTPUT_COST
        nb["notebook_left"] -= self.OUTPUT_COST
        return bool(data)

    def cut_note(self, budget: dict):
        """The note a cell gets when ``admit`` cut its outputs (the pass after execution says the same)."""
        if not budget["cut"]:
            return None
        return NotebookNode(output_type="stream", name="stdout",
                            text=f"\n[{budget['cut']:,} more bytes of output cut: each cell keeps "
                                 f"{self.max_cell_bytes:,} bytes]\n")

    def _cap_cell(self, outputs):
        left, kept, cut = self.max_cell_bytes, [], 0
        for out in outputs:
            if out.output_type == "stream":
                text = out.get("text", "")
                text = "".join(text) if isinstance(text, list) else text
                if left <= 0:
                    cut += len(text.encode("utf-8", "replace"))
                    continue
                raw = text.encode("utf-8", "replace")
                if len(raw) > left:
                    cut += len(raw) - left
                    out.text = raw[:left].decode("utf-8", "ignore")
                left -= min(len(raw), left)
                kept.append(out)
            elif out.output_type in ("display_data", "execute_result"):
                data = out.get("data", {})
                for mime in list(data):
                    value = data[mime]
                    value = "".join(value) if isinstance(value, list) else value
                    size = len(value.encode("utf-8", "replace")) if isinstance(value, str) else len(json.dumps(value))
                    if mime.startswith("image/") and size > self.max_image_bytes:
                        del data[mime]
                        data["text/plain"] = (f"[an image of {size:,} bytes was removed: images are capped at "
                                              f"{self.max_image_bytes:,} bytes]")
                    elif not mime.startswith("image/") and size > left:
                        cut += size - max(left, 0)
                        if isinstance(value, str) and left > 0:
                            data[mime] = value.encode("utf-8", "replace")[:left].decode("utf-8", "ignore")
                        else:
                            del data[mime]
                        left = 0
                    elif not mime.startswith("image/"):
                        left -= size
                if data:
                    kept.append(out)
            elif out.output_type == "error":
                out.evalue = str(out.get("evalue", ""))[:4000]
                out.traceback = [line[:4000] for line in out.get("traceback", [])[:200]]
                kept.append(out)
            else:
                kept.append(out)
        if cut:
            kept.append(NotebookNode(output_type="stream", name="stdout",
                                     text=f"\n[{cut:,} more bytes of output cut: each cell keeps "
                                          f"{self.max_cell_bytes:,} bytes]\n"))
        return kept
