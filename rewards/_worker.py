"""The processes behind `rewards._pool`: one zygote, and the workers it forks.

Usage (by the pool only): ``python -m rewards._worker CHANNEL_FD MEMORY_MB [module[:function] ...]``.

The *zygote* imports the preload modules once (math-verify and sympy take about a second),
then waits on its channel (a SOCK_SEQPACKET Unix socket) for requests:
``("spawn",)`` with a socket attached -> fork a worker serving that socket, reply its pid;
``("warm", "module:function")`` -> call it, so later forks inherit what it loaded.
A fork takes milliseconds, which is what makes killing a stuck worker cheap.

A *worker* reads ``(fn_path, args)`` frames, answers ``("ok", value)`` or ``("error", message)``.
It has an address-space limit, ignores Ctrl-C (the parent handles it and kills workers), prints
stray output to stderr, and exits when its socket closes or the zygote disappears. The zygote
exits when the parent closes the channel (or dies).
"""

from __future__ import annotations

import importlib
import logging
import os
import pickle
import resource
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from rewards._pool import recv_frame, send_frame


def _resolve(path: str, cache: dict[str, Callable[..., Any]]) -> Callable[..., Any]:
    if path not in cache:
        module_name, _, attr = path.partition(":")
        cache[path] = getattr(importlib.import_module(module_name), attr)
    return cache[path]


def _describe(exc: BaseException) -> str:
    try:
        text = f"{type(exc).__name__}: {exc}"
    except Exception:  # noqa: BLE001 - str() of some sympy objects fails or takes long; the type is enough
        text = type(exc).__name__
    return text[:500]


def _call(path: str, args: tuple, cache: dict[str, Callable[..., Any]]) -> tuple[str, Any]:
    try:
        return "ok", _resolve(path, cache)(*args)
    except BaseException as exc:  # noqa: BLE001 - everything, incl. RecursionError, is a task error
        return "error", _describe(exc)


def _watch_parent(parent: int) -> None:
    # A task stuck in C code never reads its socket again; leave when the zygote is gone.
    while True:
        time.sleep(1.0)
        if os.getppid() != parent:
            os._exit(0)


def serve(fd: int, memory_mb: int, cache: dict[str, Callable[..., Any]]) -> None:
    """The worker loop (in a forked child of the zygote)."""
    if memory_mb > 0:
        limit = memory_mb << 20
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    threading.Thread(target=_watch_parent, args=(os.getppid(),), daemon=True).start()
    while True:
        try:
            fn_path, args = recv_frame(fd)
        except (EOFError, OSError):
            return
        reply = _call(fn_path, args, cache)
        try:
            send_frame(fd, reply)
        except (pickle.PicklingError, TypeError, AttributeError) as exc:  # an unpicklable value
            send_frame(fd, ("error", _describe(exc)))


def zygote(channel: socket.socket, memory_mb: int, preload: list[str]) -> None:
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # the kernel reaps exited workers
    cache: dict[str, Callable[..., Any]] = {}
    for item in preload:
        module_name, _, attr = item.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue  # optional dependency missing: tasks that need it report the error
        if attr:
            getattr(module, attr)()
    channel.send(pickle.dumps(("ready", os.getpid())))
    while True:
        try:
            data, fds, _, _ = socket.recv_fds(channel, 65536, 1)
        except OSError:
            return
        if not data:
            return  # the parent closed the channel
        request = pickle.loads(data)
        if request[0] == "spawn":
            pid = os.fork()
            if pid == 0:
                channel.close()
                signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                try:
                    serve(fds[0], memory_mb, cache)
                finally:
                    os._exit(0)
            for fd in fds:
                os.close(fd)
            channel.send(pickle.dumps(("ok", pid)))
        elif request[0] == "warm":
            channel.send(pickle.dumps(_call(request[1], (), cache)))


def main(argv: list[str]) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    os.dup2(2, 1)  # stray prints from task code go to stderr
    logging.getLogger("math_verify").setLevel(logging.ERROR)
    channel = socket.socket(fileno=int(argv[0]))
    zygote(channel, int(argv[1]), argv[2:])


if __name__ == "__main__":
    main(sys.argv[1:])
