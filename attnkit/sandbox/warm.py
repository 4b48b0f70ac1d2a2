"""Warm start: kernels forked from a per-student zygote that has already imported the heavy modules."""
from __future__ import annotations

import atexit
import contextlib
import hashlib
import json
import os
import tempfile
import time

from attnkit import switched_on
from attnkit.sandbox.limits import mount_small_tmpfs, remove_dir
from attnkit.sandbox.zygote import ENV_HANDED, Zygote


ENV_WARM = "ATTNKIT_WARM_START"          # 1: fork kernels from a per-student zygote; else each starts cold
# what the notebooks and their tests import (matplotlib alone is 0.5 s, and its font list more)
PRELOAD = ("numpy", "matplotlib.pyplot", "torch.testing", "torch.utils.flop_counter")
# ---------------------------------------------------------------------------- warm start
_warm: dict | None = None   # the open warm_start() scope: {"runs", "zygote", "spare", "next", "prestart", "reuse"}
_next: "Zygote | None" = None  # for the next student of this grading process: kept, or started ahead


# A warm sandbox keeps its zygote beside every kernel: Gradescope's 1 CPU / 768 MB, one submission, bwrap, cgroup
# peak 568-631 MB warm against 526-571 MB with cold kernels (benchmarks/gradescope_limits.py). Under this much
# memory for each grading process (below a "1.0 GB" container however counted, 953 or 1024 MiB), kernels start cold
# unless ATTNKIT_WARM_START is set.
WARM_MB_PER_WORKER = 900
# Where the batch process grades its one student itself (batch/workers.py: IN_PROCESS_ENV, Gradescope's runner), no
# second copy of its pages is made for a forked grading process: warm, with the last kernel's zygote a keeper
# (last_kernel), the same benchmark read 517-518 MB solved and 541-559 MB quadratic (against 589-600 and 628 MB
# forked). Kernels start warm from this much memory.
WARM_MB_IN_PROCESS = 700


def too_little_memory(workers: int = 1, in_process: bool = False) -> str:
    """Why this host has too little memory to start ``workers`` grading processes' kernels warm ('' where it has
    enough): a zygote beside each kernel is the margin on a small container. ``in_process``: the batch process
    grades its one student itself."""
    from attnkit.sandbox import limits

    need = WARM_MB_IN_PROCESS if in_process and workers == 1 else WARM_MB_PER_WORKER
    have, where = limits.memory_mb()
    if have is None or have >= workers * need:
        return ""
    each = f"{have // workers} MB for each of {workers} grading processes" if workers > 1 else f"{have} MB"
    return f"{each} ({where}), under the {need} MB a grading process needs to keep a warm sandbox"


def cold_for_memory(workers: int = 1, in_process: bool = False) -> str:
    """Why kernels start cold where warm start is on but for this host's memory ('' otherwise). An
    ATTNKIT_WARM_START set to a value (on or off) holds on any host; set empty, it is not a choice."""
    if not _switched_on_here() or os.environ.get(ENV_WARM, "").strip():
        return ""
    return too_little_memory(workers, in_process)


def _switched_on_here() -> bool:
    # as root only: the zygote must be another uid than the notebooks (as bwrap's init is), or a
    # notebook's kill -9 -1 would take the zygote, and with it the whole sandbox, down
    return os.geteuid() == 0 and switched_on(ENV_WARM)


def warm_enabled(workers: int = 1) -> bool:
    return _switched_on_here() and not cold_for_memory(workers)


def _new_runs() -> str:
    """The folder a zygote's kernels keep their connection files, sockets and logs in: a small tmpfs."""
    runs = tempfile.mkdtemp(prefix=f"attnkit-runs-{os.getpid()}-")
    mount_small_tmpfs(runs)
    os.chmod(runs, 0o755)
    return runs




@atexit.register
def _drop_next() -> None:
    global _next, _early
    for zyg in (_next, _early):
        if zyg is not None:
            zyg.discard()
    _next = _early = None


@contextlib.contextmanager
def warm_start(prestart: bool = False):
    """Within: the kernels fork from one pre-imported interpreter (one sandbox), not started cold.
    batch/student.py opens one per student; outside, every kernel is cold.

    ``prestart``: more students follow in this process. By default the sandbox then outlives the
    scope and the next student's kernels fork from it too: it is emptied before every kernel,
    whoever's it is, exactly as between two notebooks of one student. With
    ``CourseKernelManager.sandbox_per_student``, the sandbox ends with the student instead, and the
    next student's is started as soon as this one's is up (its imports overlap this grading)."""
    global _warm, _next
    if not warm_enabled() or _warm is not None:
        yield
        return
    spare, _next = _next, None
    if spare is not None and not spare.alive:
        spare.discard()
        spare = None
    runs = spare.runs if spare is not None else _new_runs()
    _warm = {"runs": runs, "zygote": None, "spare": spare, "next": None, "prestart": prestart, "reuse": False}
    try:
        yield
    finally:
        scope, _warm = _warm, None
        keep = scope["zygote"] if scope["reuse"] and scope["prestart"] and scope["next"] is None else None
        if keep is not None and keep.alive:
            _next = keep  # with its runs folder, which it binds
            if scope["spare"] is not None:
                scope["spare"].stop()
        else:
            for zyg in (scope["zygote"], scope["spare"]):
                if zyg is not None:
                    zyg.stop()
            remove_dir(runs)
            _next = scope["next"]


def last_kernel() -> None:
    """The open scope's next kernel is its last (the last notebook of a student no other follows in this process):
    its zygote need not stay beside it. Once it has forked that kernel it becomes a small keeper that answers for
    it and forks no more (attnkit.kernel's ``_become_keeper``); a later kernel of the scope (a restart) starts
    cold."""
    if _warm is not None and not _warm["prestart"]:
        _warm["last"] = True


def spawn_is_last() -> bool:
    """Is the kernel about to be forked the scope's last (``last_kernel``)?"""
    return bool(_warm is not None and _warm.get("last"))


def forked_last() -> None:
    """The scope's last kernel was forked: its zygote forks no more, so any kernel after it (a restart after a
    death) starts cold at once, without asking."""
    if _warm is not None:
        _warm["retired"] = True


def forks_kernels() -> bool:
    """Does the open scope fork its next kernel (not past its last)?"""
    return _warm is not None and not _warm.get("retired")


def _digest(workfiles: dict) -> str:
    h = hashlib.sha256()
    for name, path in sorted(workfiles.items()):
        with open(path, "rb") as f:
            h.update(name.encode() + b"\0" + hashlib.sha256(f.read()).digest())
    return h.hexdigest()


def _zygote_key(uid: int, workfiles: dict, env: dict, scratch_mb: int, preload: tuple) -> tuple:
    return (uid, _digest(workfiles), tuple(sorted(env.items())), scratch_mb, tuple(preload))


def launch_ahead(uid: int, workfiles: dict, env: dict, scratch_mb: int, preload: tuple = ()) -> Zygote:
    """An interpreter for kernels with these grader files and limits, started now, not waited for."""
    key = _zygote_key(uid, workfiles, env, scratch_mb, preload)
    return Zygote(key, uid, workfiles, env, scratch_mb, _new_runs(), preload, wait=False)


def start_ahead(uid: int, workfiles: dict, env: dict, scratch_mb: int, preload: tuple = ()) -> Zygote | None:
    """Start, now, the interpreter the next warm_start() scope will take if its first kernel has
    these grader files and limits (a grading process calls it as it starts, before its first student)."""
    global _next
    if _next is None and _warm is None and warm_enabled():
        _next = launch_ahead(uid, workfiles, env, scratch_mb, preload)
    return _next


# ---------------------------------------------------------------------------- the first sandbox, before the configuration
ENV_EARLY = "ATTNKIT_EARLY_SANDBOX"  # 0: ./kit autograde starts its first sandbox only once the configuration is loaded
ENV_CACHE = "ATTNKIT_CACHE"  # the kit's own cache folder (default: attnkit in the user's cache folder)
_early: Zygote | None = None


def _remembered(root: str) -> str:
    """Where a course's last first-sandbox settings are kept: the kit's cache folder, not the course's (a course
    folder may be read-only, or under version control), one file per course."""
    folder = os.environ.get(ENV_CACHE) or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "attnkit")
    return os.path.join(folder, "first-sandbox-" + hashlib.sha256(os.path.realpath(root).encode()).hexdigest()[:16]
                        + ".json")


def remember_first(root: str, workfiles: dict, env: dict, scratch_mb: int, preload: tuple) -> None:
    """Keep the settings the batch's first sandbox was started with, for the course's next ``./kit autograde``."""
    path = _remembered(root)
    want = {"workfiles": workfiles, "env": env, "scratch_mb": scratch_mb, "preload": list(preload)}
    with contextlib.suppress(OSError, ValueError):
        with open(path) as f:
            if json.load(f) == want:
                os.utime(path)
                return
    with contextlib.suppress(OSError):
        folder = os.path.dirname(path)
        os.makedirs(folder, mode=0o700, exist_ok=True)
        for name in os.listdir(folder):  # courses not graded for a month (scratch courses, last term's)
            if name.startswith("first-sandbox-") and time.time() - os.lstat(os.path.join(folder, name)).st_mtime > 30 * 86400:
                os.unlink(os.path.join(folder, name))
        tmp = f"{path}.{os.getpid()}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(want, f)
        os.replace(tmp, path)


def forget_first(root: str) -> None:
    """The course's batches start no warm sandbox now (another mode, warm start off): nothing to start early."""
    with contextlib.suppress(OSError):
        os.unlink(_remembered(root))


def launch_remembered(root: str, workers: int | None = None) -> None:
    """Start the course's first sandbox as the last ``./kit autograde`` of this course did, before this one has
    loaded the configuration (0.7 s of imports on one core): its own imports then run on another. The batch takes
    it only if the settings it computes are the same (``take_early``); else it is stopped. Only where it can pay:
    warm start on (for ``workers`` grading processes, default one a core, as the batch), two cores or more, the settings
    file this user's own."""
    global _early
    if (_early is not None or not warm_enabled(workers or os.cpu_count() or 1) or not switched_on(ENV_EARLY)
            or len(os.sched_getaffinity(0)) < 2):  # (workers: as the batch counts them by default)
        return
    path = _remembered(root)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        with os.fdopen(fd) as f:
            st = os.fstat(f.fileno())
            if st.st_uid != os.geteuid() or st.st_mode & 0o022:
                return
            data = json.load(f)
        workfiles = {str(k): str(v) for k, v in data["workfiles"].items()}
        env = {str(k): str(v) for k, v in data["env"].items()}
        scratch_mb, preload = int(data["scratch_mb"]), tuple(str(m) for m in data["preload"])
        if not all(os.path.isfile(p) for p in workfiles.values()):
            return
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return
    from attnkit.sandbox.detection import detect
    from attnkit.sandbox.slots import claim_slot

    try:
        if detect() != "bwrap":
            return
    except Exception:  # noqa: BLE001 (the batch says why no sandbox works)
        return
    try:
        uid, lock = claim_slot(0)  # the batch's first slot, the one that takes it (CourseKernelManager.start_ahead)
    except Exception:  # noqa: BLE001 (every uid in use: the batch says so)
        return
    try:
        _early = launch_ahead(uid, workfiles, env, scratch_mb, preload)
    except Exception:  # noqa: BLE001 (only a head start: the batch starts its own)
        lock.close()
        return
    _early.slot_lock = lock


def drop_early() -> None:
    """Stop the sandbox ``launch_remembered`` started (the batch starts its kernels cold)."""
    global _early
    zyg, _early = _early, None
    if zyg is not None:
        zyg.discard()


def take_early(workfiles: dict, env: dict, scratch_mb: int, preload: tuple) -> Zygote | None:
    """The sandbox ``launch_remembered`` started, if it has exactly these settings (its slot lock with it);
    else None, and it is stopped."""
    global _early
    zyg, _early = _early, None
    if zyg is None:
        return None
    if zyg.alive and zyg.key == _zygote_key(zyg.key[0], workfiles, env, scratch_mb, preload):
        return zyg
    zyg.discard()
    return None




def keep_here(zyg: Zygote) -> None:
    """The sandbox started for worker slot 0 is this process's own: the batch process grades its one student
    itself (no handover); its slot's uid and lock with it."""
    global _next
    from attnkit.sandbox.slots import hold_slot

    if zyg.slot_lock is not None:  # this process holds it from now on, whatever becomes of the zygote
        hold_slot(zyg.key[0], zyg.slot_lock)
        zyg.slot_lock = None
    _next = zyg


def adopt_handed() -> bool:
    """In a grading process: take the zygote the batch process started for it, if any."""
    global _next
    value = os.environ.pop(ENV_HANDED, "")
    if not value or _next is not None:
        return False
    fd, _, info = value.partition(" ")
    _next = Zygote.adopt(int(fd), info)
    return True


def _zygote_for(uid: int, workfiles: dict, env: dict, scratch_mb: int, preload: tuple = (),
                per_student: bool = False) -> Zygote:
    """The scope's zygote for these grader files and limits (the one kept or started ahead if it
    matches, else a new one; a new one too if it died)."""
    key = _zygote_key(uid, workfiles, env, scratch_mb, preload)
    _warm["reuse"] = not per_student
    zyg = _warm["zygote"]
    if zyg is not None and (zyg.key != key or not zyg.alive):
        zyg.stop()
        zyg = _warm["zygote"] = None
    if zyg is None:
        spare, _warm["spare"] = _warm["spare"], None
        if spare is not None and spare.key == key and spare.alive:
            zyg = spare
        else:
            if spare is not None:
                spare.stop()
            zyg = Zygote(key, uid, workfiles, env, scratch_mb, _warm["runs"], preload)
        _warm["zygote"] = zyg
        zyg.wait_ready()
        if _warm["prestart"] and per_student and _warm["next"] is None:
            _warm["next"] = Zygote(key, uid, workfiles, env, scratch_mb, _new_runs(), preload, wait=False)
    return zyg
