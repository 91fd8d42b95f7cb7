"""The processes of a code test run (see `rewards.code`): the *candidate* and the *judge*.

Standalone on purpose: `rewards.code` starts it as ``python -I -B -S -c <this file's text> ROLE
...`` and it imports nothing from the project. The candidate and the judge talk only through two
pipes (judge -> candidate requests, candidate -> judge replies; frames of an 8-byte length and
a payload).

The **candidate** process (``candidate REQUEST_FD REPLY_FD``, one sandbox per completion) runs
the completion's program and nothing else. It reads ``{"program", "limits", "paths"}`` (JSON)
from stdin, sends ``R`` (ready), applies the limits (rlimits and the seccomp filter below), runs
the program, sends ``L1`` (loaded) or ``L0``, then answers requests until the judge closes its
pipe: ``N [names]`` -> ``N [the names the program bound to something callable]``;
``C [name, args, kwargs]`` -> ``V <data>`` (the return value), ``E [type, message]`` (it
raised; ``type`` is the nearest builtin exception class), or ``X type`` (not plain data). Its
own stdout and stderr go to /dev/null; nothing it does in its process is trusted.

The **judge** runs the dataset's tests, and never the candidate's code. The *judge server*
(``judge-server CHANNEL_FD``, one sandbox for the life of the reward's process) forks one judge
per completion (`judge_server`). A judge reads ``{"prelude", "tests", "entry_point",
"n_asserts", "candidate_names", "timeout", "grace", "max_value_bytes", "limits"}`` from its
config pipe, applies the limits, runs the trusted prelude (the dataset's stub: helpers such as
HumanEval/32's ``poly``), binds every name in ``candidate_names`` that the program defines to a
`Proxy` (a call sends the arguments to the candidate process as data and returns the reply
decoded as data), runs the tests (each ``assert`` already rewritten to
``__r1_assert__(index, lambda: condition)``), calls ``check(candidate)``, and writes one line
``result {"passed", "timeout", "unsupported", "candidate"}`` to its result pipe. It stops
waiting for the candidate `timeout` seconds after it started; a call after that (or after the
candidate died) raises `CandidateGone`.

**Plain data** (`to_data` / `from_data`): None, bool, int, float (nan and infinities included),
str, bytes, complex, and lists, tuples, dicts, sets and frozensets of plain data, as tagged JSON
(a JSON object is always a tag: ``{"tuple": [...]}``, ``{"dict": [[key, value], ...]}``,
``{"set": [...]}``, ``{"frozenset": [...]}``, ``{"bytes": "<hex>"}``, ``{"complex": [re, im]}``,
``{"int": "<hex>"}`` for ints of 64 bits or more). The judge decodes a reply with `json.loads`
into new objects of exactly these builtin types, so whatever the candidate sends, the tests
compare builtin values with the judge's own code. A reply over `max_value_bytes`, malformed, or
not data raises `NotData` at the call: its assert fails. A value the *tests* pass that is not
data (a lambda, an object) makes the run unsupported (`Unsupported`).

Limits, in both processes before any untrusted code runs: rlimits (CPU seconds, address space,
file size, processes, no core files) and, on Linux x86-64/aarch64, a seccomp filter that refuses
new processes (fork, vfork, clone without CLONE_THREAD; clone3 reports ENOSYS so threads fall
back to clone) and IPv4/IPv6 sockets. RLIMIT_NPROC alone does not stop a fork bomb when the
sandbox runs as root.

Why one file: `rewards.code` runs this file's text with `python -I -B -S -c` in a sandbox that
sees nothing of the project, so it can only be one file.
"""

import builtins
import ctypes
import json
import math
import os
import platform
import resource
import select
import signal
import struct
import sys
import time

_HEADER = struct.Struct("<Q")  # frame = 8-byte little-endian length + payload
_MAX_DEPTH = 100  # nesting of plain data; deeper is not data (the judge's json has its own limit)


# -- confinement ------------------------------------------------------------------------------
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


def _confine(limits):
    """rlimits, then the seccomp filter: from here on this process cannot start processes."""
    memory = limits["memory_bytes"]
    resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    cpu = limits["cpu_seconds"]
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
    resource.setrlimit(resource.RLIMIT_FSIZE, (limits["file_bytes"],) * 2)
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    resource.setrlimit(resource.RLIMIT_NPROC, (limits["nproc"],) * 2)
    _install_seccomp()


def _silence():
    """Send fds 1 and 2 (and sys.stdout/stderr) to /dev/null."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)
    sys.stdout = sys.stderr = open(os.devnull, "w")


# -- plain data ----------------------------------------------------------------------------------
class NotData(BaseException):
    """A value that is not plain data (or a reply that is not a valid frame) at the boundary.

    A BaseException, so a test's own ``except Exception`` does not turn it into a pass."""


_BUILTIN_BASES = (bool, int, float, str, bytes, complex, list, tuple, dict, frozenset, set)


def to_data(value, depth=0):
    """`value` as tagged-JSON-ready plain data (see the module docstring).

    Subclasses of the builtin types (IntEnum, namedtuple, OrderedDict, numpy.float64...) become
    their builtin value, and numpy scalars their `.item()`: what they compare as.

    >>> to_data({(1, 2): {3}, "b": b"\\x00"})
    {'dict': [[{'tuple': [1, 2]}, {'set': [3]}], ['b', {'bytes': '00'}]]}

    Raises:
        NotData: anything else (functions, generators, other objects), or nesting deeper than 100.
    """
    if depth > _MAX_DEPTH:
        raise NotData("nested too deeply")
    kind = type(value)
    if value is None or kind is bool or kind is str or kind is float:
        return value
    if kind is int:
        return value if -(1 << 63) < value < (1 << 63) else {"int": hex(value)}
    if kind is list:
        return [to_data(item, depth + 1) for item in value]
    if kind is tuple:
        return {"tuple": [to_data(item, depth + 1) for item in value]}
    if kind is dict:
        return {"dict": [[to_data(k, depth + 1), to_data(v, depth + 1)] for k, v in value.items()]}
    if kind is set or kind is frozenset:
        return {kind.__name__: [to_data(item, depth + 1) for item in value]}
    if kind is bytes:
        return {"bytes": value.hex()}
    if kind is complex:
        return {"complex": [value.real, value.imag]}
    for base in _BUILTIN_BASES:
        if isinstance(value, base):
            return to_data(base(value), depth + 1)
    if kind.__module__ == "numpy" and getattr(value, "ndim", None) == 0 and callable(getattr(value, "item", None)):
        return to_data(value.item(), depth + 1)
    raise NotData(f"a {kind.__name__} is not plain data")


def _is_number(value):
    return type(value) is int or type(value) is float


def _from_tag(obj):
    """json object_hook: every JSON object is a one-key tag, decoded bottom-up into a builtin."""
    if len(obj) == 1:
        ((tag, value),) = obj.items()
        if tag in ("tuple", "set", "frozenset") and type(value) is list:
            return {"tuple": tuple, "set": set, "frozenset": frozenset}[tag](value)  # TypeError if unhashable
        if tag == "dict" and type(value) is list and all(type(p) is list and len(p) == 2 for p in value):
            return dict(value)
        if tag == "bytes" and type(value) is str:
            return bytes.fromhex(value)
        if tag == "complex" and type(value) is list and len(value) == 2 and all(map(_is_number, value)):
            return complex(value[0], value[1])
        if tag == "int" and type(value) is str and len(value) < 1 << 20:
            return int(value, 16)
    raise ValueError("not a plain-data tag")


def from_data(text):
    """Decode tagged JSON (str or bytes) into plain data of exactly the builtin types.

    >>> from_data('{"dict": [[{"tuple": [1, 2]}, {"set": [3]}], ["n", NaN]]}')
    {(1, 2): {3}, 'n': nan}

    Raises:
        NotData: for text that is not tagged JSON of plain data.
    """
    try:
        return json.loads(text, object_hook=_from_tag)
    except (ValueError, TypeError, RecursionError, MemoryError, UnicodeDecodeError) as exc:
        raise NotData(f"not plain data ({type(exc).__name__})") from None


def _dumps(value):
    return json.dumps(value, allow_nan=True).encode()


# -- frames ---------------------------------------------------------------------------------------
def _read_exactly(fd, n):
    """Blocking read of n bytes (the candidate's side); None at end of file."""
    chunks = []
    while n:
        chunk = os.read(fd, min(n, 1 << 20))
        if not chunk:
            return None
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


def _send_blocking(fd, payload):
    data = memoryview(_HEADER.pack(len(payload)) + payload)
    while data:
        data = data[os.write(fd, data) :]


# -- the candidate process ----------------------------------------------------------------------
def _builtin_exception_name(exc):
    """The nearest builtin class of `exc` (a ValueError subclass reports "ValueError")."""
    for cls in type(exc).__mro__:
        if cls.__module__ == "builtins":
            return cls.__name__
    return "Exception"


def serve_candidate(request_fd, reply_fd):
    config = json.loads(sys.stdin.read())  # before the program runs; stdin is then at its end
    sys.path.extend(config["paths"])
    _silence()

    def send(payload):
        try:
            _send_blocking(reply_fd, payload)
        except OSError:  # the judge is gone: nothing left to do
            os._exit(0)

    send(b"R")
    _confine(config["limits"])
    namespace = {"__name__": "__r1_candidate__", "__builtins__": builtins}
    try:
        exec(compile(config["program"], "solution.py", "exec"), namespace)
        loaded = True
    except BaseException:  # noqa: BLE001 - a program that fails to load passes no assert
        loaded = False
    send(b"L1" if loaded else b"L0")
    if not loaded:
        os._exit(0)
    while True:
        header = _read_exactly(request_fd, _HEADER.size)
        frame = header and _read_exactly(request_fd, _HEADER.unpack(header)[0])
        if not frame:
            os._exit(0)  # the judge closed its pipe: the tests are over
        kind, body = frame[:1], frame[1:]
        if kind == b"N":
            names = [n for n in json.loads(body) if type(n) is str and callable(namespace.get(n))]
            send(b"N" + _dumps(names))
            continue
        try:
            name, args, kwargs = from_data(body)
            value = namespace[name](*args, **kwargs)
        except BaseException as exc:  # noqa: BLE001 - SystemExit and KeyboardInterrupt too: reported
            try:
                message = str(exc)[:500]
            except BaseException:  # noqa: BLE001
                message = ""
            send(b"E" + _dumps([_builtin_exception_name(exc), message]))
            continue
        try:
            payload = b"V" + _dumps(to_data(value))
        except BaseException as exc:  # noqa: BLE001 - NotData, a recursion, a failing conversion
            payload = b"X" + _dumps(type(value).__name__ if isinstance(exc, NotData) else type(exc).__name__)
        send(payload)


# -- the judge process --------------------------------------------------------------------------
class CandidateGone(BaseException):
    """The candidate process exited, was killed, sent a broken frame or missed the deadline."""


class CandidateExit(BaseException):
    """The function raised SystemExit, KeyboardInterrupt or another non-Exception."""


class CandidateError(Exception):
    """The function raised an exception that has no builtin class of the same name."""


class Unsupported(BaseException):
    """The tests passed the function a value that is not plain data."""


class Channel:
    """The judge's end of the two pipes, with the deadline for everything the candidate does."""

    def __init__(self, request_fd, reply_fd, deadline, max_value_bytes):
        self.request_fd, self.reply_fd = request_fd, reply_fd
        os.set_blocking(request_fd, False)
        os.set_blocking(reply_fd, False)
        self.deadline = deadline
        self.max_value_bytes = max_value_bytes
        self.gone = False
        self.timed_out = False
        self.unsupported = False
        self._buffer = bytearray()  # bytes read from the reply pipe, not yet taken
        self._pollers = {}

    def _lose(self, timed_out=False):
        self.gone = True
        self.timed_out = self.timed_out or timed_out
        raise CandidateGone()

    def _check_deadline(self):
        if time.monotonic() >= self.deadline:
            self._lose(timed_out=True)

    def _wait(self, fd, event):
        """Until `fd` is ready for `event` (or hung up); at the deadline the candidate is lost."""
        poller = self._pollers.get(fd)
        if poller is None:
            poller = self._pollers[fd] = select.poll()
            poller.register(fd, event | select.POLLHUP | select.POLLERR)
        remaining = self.deadline - time.monotonic()
        if remaining <= 0 or not poller.poll(max(1, math.ceil(remaining * 1000))):
            self._lose(timed_out=True)

    # Each loop tries the system call first and polls only when the pipe is not ready: a call
    # costs two context switches, not four polls more.
    def send(self, payload):
        data = memoryview(_HEADER.pack(len(payload)) + payload)
        while data:
            self._check_deadline()
            try:
                data = data[os.write(self.request_fd, data) :]
            except BlockingIOError:
                self._wait(self.request_fd, select.POLLOUT)
            except OSError:  # EPIPE: the candidate exited
                self._lose()

    def _read(self, n, keep=True):
        chunks = []
        while n:
            if not self._buffer:
                self._check_deadline()
                try:
                    chunk = os.read(self.reply_fd, 1 << 16)
                except BlockingIOError:
                    self._wait(self.reply_fd, select.POLLIN)
                    continue
                except OSError:
                    self._lose()
                if not chunk:
                    self._lose()
                self._buffer += chunk
            piece = self._buffer[:n]
            del self._buffer[: len(piece)]
            if keep:
                chunks.append(bytes(piece))
            n -= len(piece)
        return b"".join(chunks)

    def receive(self):
        """The next frame (kind byte + body); an oversized one is read, dropped and raises NotData."""
        (size,) = _HEADER.unpack(self._read(_HEADER.size))
        if size > self.max_value_bytes:
            self._read(size, keep=False)
            raise NotData(f"a reply of {size} bytes is over the limit")
        frame = self._read(size)
        if not frame:
            raise NotData("an empty reply")
        return frame[:1], frame[1:]

    def names(self, wanted):
        """The names of `wanted` the program bound to something callable (each needs a Proxy)."""
        if self.gone or not wanted:
            return set()
        try:
            self.send(b"N" + _dumps(wanted))
            kind, body = self.receive()
            if kind == b"N":
                return {n for n in json.loads(body) if type(n) is str} & set(wanted)
        except (CandidateGone, NotData, ValueError, RecursionError):
            pass
        return set()

    def call(self, name, args, kwargs):
        if self.gone:
            raise CandidateGone()
        try:
            request = b"C" + _dumps([name, to_data(list(args)), to_data(kwargs)])
        except NotData as exc:
            self.unsupported = True
            raise Unsupported(str(exc)) from None
        self.send(request)
        kind, body = self.receive()
        if kind == b"V":
            return from_data(body)
        if kind == b"E":
            raise _candidate_exception(body)
        raise NotData("the function's value is not plain data")


def _candidate_exception(body):
    """The exception the judge raises for the candidate's ``E [type, message]`` reply."""
    try:
        name, message = json.loads(body)
        name, message = str(name), str(message)
    except (ValueError, TypeError, RecursionError):
        return NotData("a malformed exception reply")
    cls = getattr(builtins, name, None)
    if isinstance(cls, type) and issubclass(cls, Exception):
        try:
            return cls(message)
        except Exception:  # noqa: BLE001 - e.g. UnicodeDecodeError needs five arguments
            return CandidateError(f"{name}: {message}")
    if isinstance(cls, type) and issubclass(cls, BaseException):
        return CandidateExit(name)
    return CandidateError(f"{name}: {message}")


class Proxy:
    """Stands for one of the program's functions in the judge: calls cross the boundary as data."""

    def __init__(self, channel, name):
        self._channel = channel
        self.__name__ = name

    def __call__(self, *args, **kwargs):
        return self._channel.call(self.__name__, args, kwargs)

    def __repr__(self):
        return f"<function {self.__name__} (runs in the candidate's sandbox)>"


def judge(config_fd, request_fd, reply_fd, result_fd):
    """One judge (a child of `judge_server`): config from `config_fd`, the result line to `result_fd`."""
    started = time.monotonic()
    with os.fdopen(config_fd, "rb") as config_file:
        config = json.loads(config_file.read())
    # The parent stops listening at timeout + grace and asks the server to kill this process;
    # the alarm is the same deadline enforced here, should that message never come.
    signal.alarm(math.ceil(config["timeout"] + config["grace"]) + 1)
    _confine(config["limits"])
    channel = Channel(request_fd, reply_fd, started + config["timeout"], config["max_value_bytes"])
    passed_once, failed = set(), set()
    result = {"candidate": "missing", "passed": 0, "timeout": False, "unsupported": False}

    def record(index, condition):
        try:
            ok = bool(condition())
        except BaseException:  # noqa: BLE001 - a crash in a test (or in the function) fails that test
            ok = False
        (passed_once if ok else failed).add(index)

    try:
        if channel.receive() == (b"R", b""):
            result["candidate"] = "started"
            if channel.receive() == (b"L", b"1"):
                result["candidate"] = "loaded"
    except (CandidateGone, NotData):
        pass
    if result["candidate"] == "loaded":
        namespace = {"__name__": "__r1_tests__", "__builtins__": builtins}
        try:
            exec(compile(config["prelude"], "prompt.py", "exec"), namespace)
        except BaseException:  # noqa: BLE001 - then the tests miss its names and fail
            pass
        callables = channel.names(config["candidate_names"])
        for name in callables:
            namespace[name] = Proxy(channel, name)
        namespace["__r1_assert__"] = record
        entry_point = config["entry_point"]
        try:
            exec(compile(config["tests"], "tests.py", "exec"), namespace)
            check = namespace.get("check")
            if callable(check) and entry_point:
                candidate = Proxy(channel, entry_point) if entry_point in callables else None
                if config["n_asserts"] == 0:  # tests without asserts: passing = check() returns
                    record(0, lambda: (check(candidate), True)[1])
                else:
                    check(candidate)
        except BaseException:  # noqa: BLE001 - statements are wrapped; this catches the rest
            pass
    total = max(config["n_asserts"], 1)
    result["passed"] = len({i for i in passed_once - failed if i < total})
    result["timeout"], result["unsupported"] = channel.timed_out, channel.unsupported
    try:
        _send_all(result_fd, ("result " + json.dumps(result) + "\n").encode())
    except OSError:  # the parent stopped listening (its deadline)
        pass
    os._exit(0)  # skip the tests' atexit hooks and finalizers


def _send_all(fd, data):
    data = memoryview(data)
    while data:
        data = data[os.write(fd, data) :]


def judge_server(channel_fd):
    """Fork a fresh `judge` per request; runs in one sandbox for the life of the reward's process.

    Requests on the SOCK_SEQPACKET `channel_fd`: ``j<token>`` with four fds attached (config,
    request, reply, result) -> fork a judge on them; ``k<token>`` -> SIGKILL that judge if it is
    still running (the parent sends it after every run). Exits when the parent closes the channel.
    Not confined itself (it must fork); each judge applies the limits before running any test.
    """
    import socket

    config = json.loads(sys.stdin.read())
    sys.path.extend(config["paths"])
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # the kernel reaps finished judges
    channel = socket.socket(fileno=channel_fd)
    _silence()
    channel.send(b"ready")
    judges = {}  # token -> pidfd (or pid without pidfd_open) of a judge not yet told to stop
    while True:
        try:
            message, fds, _, _ = socket.recv_fds(channel, 256, 4)
        except OSError:
            return
        if not message:
            return  # the parent closed the channel (or exited)
        kind, token = message[:1], message[1:]
        if kind == b"j" and len(fds) == 4:
            pid = os.fork()
            if pid == 0:
                try:
                    channel.close()
                    for handle in judges.values():
                        if handle[0] is not None:
                            os.close(handle[0])
                    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                    judge(*fds)
                finally:
                    os._exit(0)
            try:  # a pidfd cannot hit a recycled pid
                judges[token] = (os.pidfd_open(pid), pid)
            except (AttributeError, OSError):
                judges[token] = (None, pid)
        elif kind == b"k" and token in judges:
            pidfd, pid = judges.pop(token)
            try:
                if pidfd is not None:
                    signal.pidfd_send_signal(pidfd, signal.SIGKILL)
                else:
                    os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
            if pidfd is not None:
                os.close(pidfd)
        for fd in fds:
            os.close(fd)


if __name__ == "__main__":
    if sys.argv[1] == "candidate":
        serve_candidate(int(sys.argv[2]), int(sys.argv[3]))
    else:
        judge_server(int(sys.argv[2]))
