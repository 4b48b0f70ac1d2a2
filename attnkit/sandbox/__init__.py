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
attnkit/kernel/agent.py. One concern per module: detection, limits (cgroups, tmpfs), slots, bwrap, fallback
(setpriv), warm (which zygote a kernel forks from, and when), zygote (one zygote's host side), manager
(jupyter_client's manager and client). ``from attnkit import sandbox``
then ``sandbox.NAME`` loads the one module that defines NAME (the Gradescope runner names the sandbox without
loading jupyter_client); a test that patches a name patches it in that module.
"""
from __future__ import annotations

import importlib

# module -> the names ``attnkit.sandbox.NAME`` reaches in it
_MODULES = {  # (no module is named for a name it defines: importing it would shadow that name here)
    "slots": ("ENV_SLOT_FD", "UID_BASE", "UID_SLOTS", "claim_slot", "SandboxUnavailable", "uid_slot"),
    "bwrap": ("BWRAP", "KERNEL_MODULES", "KIT_DIR", "NOT_FOR_KERNELS", "SANDBOX_HOME", "SANDBOX_KIT", "SETPRIV",
              "_python_roots", "_setpriv_args", "bwrap_argv", "bwrap_has", "isolated_copy", "python_exe",
              "workdir_files"),
    "detection": ("ENV_MODE", "MODES", "describe", "detect", "probe"),
    "limits": ("CGROUP_V1", "CGROUP_V1_CPU", "CGROUP_V2", "RUN_DIR_MB", "delegated_parent", "delegated_subtree",
               "describe_limits", "describe_meters", "KernelCgroup", "killed_first", "memory_cgroups", "meter_cgroups",
               "OOM_SCORE_ADJ",
               "mount_small_tmpfs", "remove_dir", "small_tmpfs_works", "sweep"),
    "fallback": ("SECRET_NAMES", "kill_uid", "protect", "reap_free_slots"),
    "warm": ("ENV_WARM", "PRELOAD", "adopt_handed", "launch_ahead", "start_ahead", "warm_enabled", "warm_start"),
    "zygote": ("ENV_HANDED", "ForkedKernel", "Zygote", "ZygoteError"),
    "manager": ("DIAGNOSES_DEFAULT", "KERNEL_DIED", "MAX_MESSAGE", "RCV_QUEUE", "TIMEOUT_NAMES", "CourseKernelClient",
                "CourseKernelManager", "diagnoses_setting", "run_source"),
}
_WHERE = {name: module for module, names in _MODULES.items() for name in names}


def __getattr__(name):
    if name in _MODULES:  # a submodule: sandbox.limits
        return importlib.import_module(f"attnkit.sandbox.{name}")
    if name in _WHERE:
        return getattr(importlib.import_module(f"attnkit.sandbox.{_WHERE[name]}"), name)
    if name == "CourseExecute":  # old path (course configs name it): attnkit.preprocessors.execute; goes next release
        return importlib.import_module("attnkit.preprocessors.execute").CourseExecute
    raise AttributeError(f"module 'attnkit.sandbox' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_WHERE) | set(_MODULES))
