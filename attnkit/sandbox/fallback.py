"""The setpriv fallback (no user namespaces): secret folders closed to other uids, a slot's processes killed after."""
from __future__ import annotations

import fcntl
import os
import tempfile

from attnkit.sandbox.bwrap import SETPRIV, _setpriv_args
from attnkit.sandbox.detection import _run
from attnkit.sandbox.slots import UID_BASE, UID_SLOTS


# ---------------------------------------------------------------------------- the setpriv fallback
SECRET_NAMES = ("source", "submitted", "autograded", "feedback", "reports", "gradebook.db", "exchange",
                "tests", "attnkit", "course_config.py", "nbgrader_config.py", ".git", "graders", "banks")


def protect(*roots) -> list[str]:
    """setpriv fallback: take other users' rights off the course's and the kit's secret files
    (the kernel's uid is an 'other'); the venv stays readable. Returns what was changed."""
    changed = []
    for root in roots:
        if not root or not os.path.isdir(root):
            continue
        for name in os.listdir(root):
            path = os.path.join(root, name)
            if name in SECRET_NAMES or name.startswith("gradebook.db") or name.startswith("grades"):
                mode = os.stat(path, follow_symlinks=False).st_mode & 0o7777
                if mode & 0o007:
                    os.chmod(path, mode & ~0o007)
                    changed.append(path)
    return changed


def kill_uid(uid: int) -> None:
    """setpriv fallback: no process of the slot's uid outlives its notebook (kill -9 -1 as that uid)."""
    _run([SETPRIV, *_setpriv_args(uid), "--", "/bin/kill", "-9", "-1"], timeout=10)


def reap_free_slots() -> list[int]:
    """After a grading process was killed (a stall): kill every process of a sandbox uid whose slot no
    grading process holds. Kernels run in sessions of their own, out of reach of the worker's killpg;
    bwrap's --die-with-parent ends them, setpriv's do not, and the next student could get that uid.
    Each slot is locked while its uid is cleared, so no grading process claims it meanwhile."""
    if os.geteuid() != 0:
        return []
    uids = set()
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                uid = os.stat(f"/proc/{pid}").st_uid
            except OSError:
                continue
            if UID_BASE <= uid < UID_BASE + UID_SLOTS:
                uids.add(uid)
    folder = os.path.join(tempfile.gettempdir(), ".attnkit-sandbox-uids")
    os.makedirs(folder, mode=0o700, exist_ok=True)
    reaped = []
    for uid in sorted(uids):
        with open(os.path.join(folder, str(uid - UID_BASE)), "w") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                continue   # held: a live grading process's kernels
            kill_uid(uid)
            reaped.append(uid)
    return reaped
