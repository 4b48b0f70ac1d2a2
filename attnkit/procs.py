"""Processes as /proc shows them, for the host side: a process's children and its command name.

Read in one place because one detail matters to the cost meters: the kernel lists a process's children in
/proc/<pid>/task/<tid>/children only where it was built with CONFIG_PROC_CHILDREN (Debian's and Ubuntu's are).
Elsewhere every process's parent is read instead, so that a kernel's process tree is never its first process
alone (its memory would read near zero, and an N x N answer would keep the memory points).
"""
from __future__ import annotations

import os

_listed: bool | None = None   # does this kernel list children (CONFIG_PROC_CHILDREN)? probed once


def lists_children() -> bool:
    """Does /proc list a process's children here (this process's main thread's file exists)?"""
    global _listed
    if _listed is None:
        _listed = os.path.exists(f"/proc/{os.getpid()}/task/{os.getpid()}/children")
    return _listed


def children(pid: int) -> list[int]:
    """The host pids of a process's children (of every thread's); OSError once it has gone."""
    tasks = os.listdir(f"/proc/{pid}/task")
    if not lists_children():
        return children_by_parent(pid)
    found = []
    for task in tasks:
        try:
            with open(f"/proc/{pid}/task/{task}/children") as f:
                found += [int(c) for c in f.read().split()]
        except FileNotFoundError:  # that thread ended since the listing (a gone process: the listing raised)
            continue
    return found


def children_by_parent(pid: int) -> list[int]:
    """``children`` where /proc lists none: every process whose parent is ``pid`` (a scan of /proc)."""
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                        found.append(int(name))
            except (OSError, IndexError, ValueError):
                continue
    return found


def comm(pid: int) -> str:
    """A process's command name ("" once it has gone)."""
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return ""
