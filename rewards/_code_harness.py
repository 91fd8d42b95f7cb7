"""Runs one candidate program against its tests inside the sandbox (see `rewards.code`).

Standalone on purpose: `rewards.code` copies this file into the read-only run folder and
starts ``python -I -B harness.py RUN_FOLDER`` in a writable working folder; it imports
nothing from the project.

Inputs in the run folder: ``config.json`` (limits, entry point, number of asserts),
``program.py`` (the candidate), ``tests.py`` (the tests, each ``assert`` already rewritten to
``__r1_assert__(index, lambda: condition)`` and each top-level ``a == b`` in it to
``__r1_eq__(a, b)``). Output: lines ``<nonce> <index> <1|0>`` on the original stdout, one per
assert and outcome the first time it is seen, then ``<nonce> done``.
The candidate's own stdout/stderr go to /dev/null, and the nonce (read from stdin before the
candidate runs) is in no file or environment variable, so printing fake results does not work.

Before the candidate runs: rlimits (CPU seconds, address space, file size, processes, no core
files) and, on Linux x86-64/aarch64, a seccomp filter that refuses new processes (fork, vfork,
clone without CLONE_THREAD; clone3 reports ENOSYS so threads fall back to clone) and IPv4/IPv6
sockets. RLIMIT_NPROC alone does not stop a fork bomb when the sandbox runs as root.
"""

import builtins
import ctypes
import json
import os
import platform
import resource
import struct
import sys


def _seccomp_filter():
    """The BPF program (packed bytes) for the filter described above, or None on other CPUs."""
    machine = platform.machine()
    if machine == "x86_64":
        arch, fork, vfork, clone, clone3, socket = 0xC000003E, 57, 58, 56, 435, 41
    elif machine == "aarch64":  # no fork/vfork syscalls there; -1 never matches
        arch, fork, vfork, clone, clone3, socket = 0xC00000B7, -1, -1, 220, 435, 198
    else:
        return None
    LD, JEQ, JGE, JSET, RET = 0x20, 0x15, 0x35, 0x45, 0x06
    ALLOW, EPERM, ENOSYS = 0x7FFF0000, 0x00050000 | 1, 0x00050000 | 38
    # (code, jump-if-true, jump-if-false, k); jumps count instructions after the next one.
    prog = [
        (LD, 0, 0, 4),  # 0  A = seccomp_data.arch
        (JEQ, 1, 0, arch),  # 1  our ABI? -> 3
        (RET, 0, 0, ALLOW),  # 2  another ABI: not ours to judge
        (LD, 0, 0, 0),  # 3  A = syscall number
        (JGE, 0, 1, 0x40000000),  # 4  x32 numbers would bypass the checks below
        (RET, 0, 0, EPERM),  # 5
        (JEQ, 0, 1, fork & 0xFFFFFFFF),  # 6
        (RET, 0, 0, EPERM),  # 7
        (JEQ, 0, 1, vfork & 0xFFFFFFFF),  # 8
        (RET, 0, 0, EPERM),  # 9
        (JEQ, 0, 1, clone3),  # 10 clone3 hides its flags in memory: ENOSYS makes libc use clone
        (RET, 0, 0, ENOSYS),  # 11
        (JEQ, 0, 4, clone),  # 12 -> 17 if not clone
        (LD, 0, 0, 16),  # 13 A = low word of args[0] (clone flags)
        (JSET, 0, 1, 0x00010000),  # 14 CLONE_THREAD set?
        (RET, 0, 0, ALLOW),  # 15 a thread
        (RET, 0, 0, EPERM),  # 16 a process
        (JEQ, 0, 4, socket),  # 17 -> 22 if not socket
        (LD, 0, 0, 16),  # 18 A = args[0] (address family)
        (JEQ, 1, 0, 2),  # 19 AF_INET -> 21
        (JEQ, 0, 1, 10),  # 20 AF_INET6 -> 21, else 22
        (RET, 0, 0, EPERM),  # 21
        (RET, 0, 0, ALLOW),  # 22
    ]
    return b"".join(struct.pack("=HBBI", code, jt, jf, k) for code, jt, jf, k in prog)


def _install_seccomp():
    data = _seccomp_filter()
    if data is None:
        return False
    libc = ctypes.CDLL(None, use_errno=True)

    class SockFprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_char_p)]

    fprog = SockFprog(len(data) // 8, data)
    ulong = ctypes.c_ulong
    if libc.prctl(38, ulong(1), ulong(0), ulong(0), ulong(0)) != 0:  # PR_SET_NO_NEW_PRIVS
        return False
    # PR_SET_SECCOMP, SECCOMP_MODE_FILTER
    return libc.prctl(22, ulong(2), ctypes.byref(fprog), ulong(0), ulong(0)) == 0


def main(src):
    with open(os.path.join(src, "config.json")) as f:
        config = json.load(f)
    nonce = sys.stdin.readline().strip()  # before the program runs; stdin is then at its end
    out = os.fdopen(os.dup(1), "w", buffering=1, encoding="utf-8")
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)
    sys.stdout = sys.stderr = open(os.devnull, "w")
    program = open(os.path.join(src, "program.py"), encoding="utf-8", errors="replace").read()
    tests = open(os.path.join(src, "tests.py"), encoding="utf-8").read()

    seen = {}

    def report(index, ok):
        key = (index, ok)
        if key not in seen:
            seen[key] = True
            out.write(f"{nonce} {index} {int(ok)}\n")

    def record(index, condition):
        try:
            ok = bool(condition())
        except BaseException:  # noqa: BLE001 - a crash or exit inside a test fails that test
            ok = False
        report(index, ok)

    out.write(f"{nonce} start\n")
    limit = config["memory_bytes"]
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    cpu = config["cpu_seconds"]
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
    resource.setrlimit(resource.RLIMIT_FSIZE, (config["file_bytes"],) * 2)
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    resource.setrlimit(resource.RLIMIT_NPROC, (config["nproc"],) * 2)
    _install_seccomp()

    namespace = {"__name__": "__r1_candidate__", "__builtins__": builtins}

    def equal(left, right):
        # Classes the program defines carry its module name; their __eq__ is not to be trusted.
        if "__r1_candidate__" in (type(left).__module__, type(right).__module__):
            return False
        return left == right

    try:
        exec(compile(program, "solution.py", "exec"), namespace)
        loaded = True
    except BaseException:  # noqa: BLE001
        loaded = False
    if loaded:
        namespace["__r1_assert__"] = record
        namespace["__r1_eq__"] = equal
        entry_point = config.get("entry_point")
        try:
            exec(compile(tests, "tests.py", "exec"), namespace)
            check = namespace.get("check")
            if callable(check) and entry_point:
                candidate = namespace.get(entry_point)
                if config["n_asserts"] == 0:  # tests without asserts: passing = check() returns
                    record(0, lambda: (check(candidate), True)[1])
                else:
                    check(candidate)
        except BaseException:  # noqa: BLE001 - statements are wrapped; this catches the rest
            pass
    out.write(f"{nonce} done\n")
    out.flush()
    os._exit(0)  # skip the candidate's atexit hooks and finalizers


if __name__ == "__main__":
    main(sys.argv[1])
