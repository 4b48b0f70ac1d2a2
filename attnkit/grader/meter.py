"""What the student's kernel costs, read from outside it (/proc): CPU time and peak memory.

Grader process only. Timing and memory verdicts must not rest on numbers the student's process
reports about itself, so the grader reads the kernel's processes from /proc:

* which processes: every process of the kernel's uid (the sandbox's slot uid, which only this
  notebook's kernel and its children hold; attnkit/sandbox.py), else the kernel's process tree;
* CPU: each process's CPU-time clock, read from outside (clock_gettime on the process's clock id:
  every thread, ended ones too, to the nanosecond; /proc/<pid>/schedstat lags a running thread by up
  to a scheduler tick), plus the CPU time of children they reaped (/proc/<pid>/stat cutime + cstime,
  in clock ticks);
* memory: the sum of their peak resident sets (VmHWM), which ``reset_peak`` sets back to the current
  resident set (writing 5 to /proc/<pid>/clear_refs), so a peak is that of one call.

Not covered: CPU time of a child process that ended unreaped by the kernel's processes, or that left
the uid; CPU time of reaped children counts in clock ticks only; memory that is not resident (swapped
out) or shared with processes outside the kernel.
"""
from __future__ import annotations

import os
import time

_TICK_NS = 1e9 / os.sysconf("SC_CLK_TCK")


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return None


class KernelMeter:
    """Reads one kernel's processes: by ``uid`` (sandboxed) or as the tree under ``root_pid``."""

    def __init__(self, uid: int | None = None, root_pid: int | None = None):
        if uid is None and root_pid is None:
            raise ValueError("a uid or a process to measure")
        self.uid, self.root_pid = uid, root_pid

    def pids(self) -> list[int]:
        if self.uid is not None:
            found = []
            for name in os.listdir("/proc"):
                if name.isdigit():
                    status = _read(f"/proc/{name}/status")
                    line = next((ln for ln in (status or "").splitlines() if ln.startswith("Uid:")), "")
                    if line.split()[1:2] == [str(self.uid)]:
                        found.append(int(name))
            return found
        found, todo = [], [self.root_pid]
        while todo:
            pid = todo.pop()
            found.append(pid)
            for tid in os.listdir(f"/proc/{pid}/task") if os.path.isdir(f"/proc/{pid}/task") else ():
                todo += [int(c) for c in (_read(f"/proc/{pid}/task/{tid}/children") or "").split()]
        return found

    def cpu_ns(self, pids=None) -> float:
        """CPU time of the kernel's processes so far, in nanoseconds."""
        total = 0.0
        for pid in self.pids() if pids is None else pids:
            try:  # the process's CPU clock, read from outside: every thread, also ended ones, to the ns
                total += time.clock_gettime_ns(((~pid) << 3) | 2)  # MAKE_PROCESS_CPUCLOCK(pid, CPUCLOCK_SCHED)
            except OSError:
                continue
            stat = _read(f"/proc/{pid}/stat")
            if stat:
                fields = stat.rsplit(")", 1)[1].split()
                total += (int(fields[13]) + int(fields[14])) * _TICK_NS  # children it reaped: cutime + cstime
        return total

    def _status(self, pid: int, key: str) -> int:
        for line in (_read(f"/proc/{pid}/status") or "").splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
        return 0

    def reset_peak(self) -> int:
        """Peaks back to the current resident sets; returns their sum (bytes)."""
        total = 0
        for pid in self.pids():
            try:
                with open(f"/proc/{pid}/clear_refs", "w") as f:
                    f.write("5")
            except OSError:
                pass
            total += self._status(pid, "VmRSS")
        return total

    def peak_bytes(self) -> int:
        """The sum of the processes' peak resident sets since the last ``reset_peak``."""
        return sum(self._status(pid, "VmHWM") for pid in self.pids())
