"""The grading sandbox, host side (the grading and batch processes): where, as whom and with what a notebook's kernel runs.

Modes (``detect()`` picks one at start; ``ATTNKIT_SANDBOX=bwrap|setpriv|none`` forces one):

* ``bwrap`` - each kernel runs under bubblewrap in its own PID, mount, network, IPC and UTS
  namespaces, as an unprivileged uid (one per worker slot, so RLIMIT_NPROC budgets are not
  shared), with read-only binds of the Python environment and of the kernel-side kit modules,
  a size-limited tmpfs as its working folder (the grader's helper files bound read-only into
  it), its IPC sockets in a folder bound in, and nothing else: no course, no gradebook, no
  other submission, no network. The PID namespace ends with the kernel, and with it every
  process the notebook started.
* ``setpriv`` - fallback where bwrap cannot run (Docker without user namespaces), as root:
  the kernel runs as the slot's unprivileged uid (setpriv --no-new-privs); the course's
  secret folders are made unreadable to other uids; after the kernel stops, every process
  of that uid is killed. No network or process isolation.
* ``none`` - the kernel runs as the grader (students' own machines: ./kit validate).

The kernel side (rlimits, the zygote) is attnkit/kernel/__main__.py; the agent hidden tests reach it through is
attnkit/kernel/agent.py. One concern per module: detect, limits (cgroups, tmpfs), slots, bwrap, fallback
(setpriv), warm (the zygote), manager (jupyter_client's manager and client). The names below are re-exported
for ``from attnkit import sandbox``; code that patches one patches it in its own module.
"""
from __future__ import annotations

from attnkit.sandbox.slots import (claim_slot, ENV_SLOT_FD, SandboxUnavailable, UID_BASE, uid_slot,
                                   UID_SLOTS)  # noqa: F401
from attnkit.sandbox.bwrap import (_python_roots, _setpriv_args, BWRAP, bwrap_argv, bwrap_has, isolated_copy,
                                   KERNEL_MODULES, KIT_DIR, NOT_FOR_KERNELS, python_exe, SANDBOX_HOME, SANDBOX_KIT,
                                   SETPRIV, workdir_files)  # noqa: F401
from attnkit.sandbox.detect import describe, detect, ENV_MODE, MODES, probe  # noqa: F401
from attnkit.sandbox.limits import (CGROUP_V1, CGROUP_V1_CPU, CGROUP_V2, delegated_parent, delegated_subtree,
                                    describe_limits, describe_meters, KernelCgroup, memory_cgroups, meter_cgroups,
                                    mount_small_tmpfs, remove_dir, RUN_DIR_MB, small_tmpfs_works, sweep)  # noqa: F401
from attnkit.sandbox.fallback import kill_uid, protect, reap_free_slots, SECRET_NAMES  # noqa: F401
from attnkit.sandbox.warm import (adopt_handed, ENV_HANDED, ENV_WARM, ForkedKernel, launch_ahead, PRELOAD, start_ahead,
                                  warm_enabled, warm_start, Zygote, ZygoteError)  # noqa: F401
from attnkit.sandbox.manager import (CourseKernelClient, CourseKernelManager, DIAGNOSES_DEFAULT, diagnoses_setting,
                                     KERNEL_DIED, MAX_MESSAGE, RCV_QUEUE, run_source, TIMEOUT_NAMES)  # noqa: F401


def __getattr__(name):
    """``attnkit.sandbox.CourseExecute`` (course configs name it): now attnkit.preprocessors.execute. Goes away
    next release."""
    if name == "CourseExecute":
        from attnkit.preprocessors import execute
        return getattr(execute, name)
    raise AttributeError(f"module 'attnkit.sandbox' has no attribute {name!r}")
