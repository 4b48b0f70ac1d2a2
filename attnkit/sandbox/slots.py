"""Uid slots: one unprivileged uid per worker slot, held by a file lock."""
from __future__ import annotations

import fcntl
import os
import tempfile


UID_BASE = 2_000_000                  # far above real users and the usual subuid ranges
UID_SLOTS = 256
class SandboxUnavailable(RuntimeError):
    pass
# ---------------------------------------------------------------------------- uid slots
_held_slot: tuple[int, object] | None = None


def uid_slot() -> int:
    """This process's sandbox uid: one per concurrent grading process, held (flock) until it exits,
    so each worker's kernels have their own RLIMIT_NPROC budget and their own kill -9 -1."""
    global _held_slot
    if os.geteuid() != 0:  # unprivileged bwrap: the kernel keeps the grader's uid (in its own user namespace)
        return os.getuid()
    if _held_slot is not None:
        return _held_slot[0]
    handed = os.environ.pop(ENV_SLOT_FD, "")
    if handed:  # locked for this process by the batch process (with the sandbox it started for it)
        fd, _, uid = handed.partition(" ")
        _held_slot = (int(uid), os.fdopen(int(fd), "w"))
        return _held_slot[0]
    _held_slot = claim_slot(int(os.environ.get("ATTNKIT_SANDBOX_SLOT", "0") or 0))
    return _held_slot[0]


ENV_SLOT_FD = "ATTNKIT_SANDBOX_SLOT_FD"  # "fd uid": a slot lock handed to a grading process


def hold_slot(uid: int, lock) -> None:
    """This process's sandbox uid is ``uid``, whose lock (claim_slot's) it holds: the batch process grades in
    itself with the sandbox it started for its one worker slot."""
    global _held_slot
    _held_slot = (uid, lock)


def claim_slot(start: int) -> tuple[int, object]:
    """(uid, open lock file) of the first free slot from ``start`` on; held while the file is open
    in any process (a grading process may inherit it)."""
    folder = os.path.join(tempfile.gettempdir(), ".attnkit-sandbox-uids")
    os.makedirs(folder, mode=0o700, exist_ok=True)
    for i in range(UID_SLOTS):
        slot = (start + i) % UID_SLOTS
        f = open(os.path.join(folder, str(slot)), "w")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.close()
            continue
        return UID_BASE + slot, f
    raise SandboxUnavailable(f"all {UID_SLOTS} sandbox uids are in use")
