"""The kernel's end of the grading line: the socket the grader's requests and their replies travel on.

Kernel side (bound read-only into the sandbox). For each test cell the grader process listens on a Unix
socket (attnkit/grader/channel.py, ``Line``) and runs one execution in the kernel, wire.SESSION_CALL:

    __import__("attnkit.kernel.line").kernel.line.session('<socket path>')

which connects to it and answers the cell's requests (attnkit/kernel/agent.py), a frame each (wire.frame),
until the grader hangs up. One execution per cell, not per request: a comm message or an execution per
request cost 1.5-6 ms of the kernel's messaging, a frame on a socket about 0.05 ms
(benchmarks/small_costs.py). A callback's arguments travel on the same socket, and so does the answer.
"""
from __future__ import annotations

import socket

from attnkit.kernel import agent, wire

_line = None   # the grader's socket while a session runs (a test cell's requests)


def _recv_exact(sock, size: int) -> bytes | None:
    buf = bytearray(size)
    view, got = memoryview(buf), 0
    while got < size:
        n = sock.recv_into(view[got:])
        if not n:
            return None
        got += n
    return bytes(buf)


def _recv_frame(sock):
    """(kind, text) of the grader's next frame; None when it hung up."""
    head = _recv_exact(sock, wire.FRAME.size)
    if head is None:
        return None
    kind, size = wire.FRAME.unpack(head)
    if size > agent.MAX_REQUEST:
        raise wire.WireError("a request over the size limit")
    body = _recv_exact(sock, size)
    return None if body is None else (kind, body.decode("utf-8", "replace"))


def session(path: str) -> None:
    """Serve the grader's requests over the Unix socket it listens on at ``path`` until it hangs up."""
    global _line
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(path)

    def ask(prompt: str) -> str:
        sock.sendall(wire.frame(wire.CALLBACK, prompt))
        got = _recv_frame(sock)
        if got is None or got[0] != wire.ANSWER:
            raise RuntimeError("the grader gave no answer to a callback")
        return got[1]

    _line = sock
    try:
        while True:
            got = _recv_frame(sock)
            if got is None or got[0] != wire.REQUEST:
                return
            agent._ask = ask
            try:
                payload = agent._reply(got[1])
            finally:
                agent._ask = None
            sock.sendall(wire.frame(wire.REPLY, payload))
    finally:
        _line = None
        sock.close()
