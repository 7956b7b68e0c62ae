"""Run untrusted Python (model-written code) in a subprocess with a timeout and resource limits.

Each program runs in a fresh ``python -I`` (isolated mode: no user site, no
``PYTHON*`` variables) in its own session and an empty temporary working
directory, with stdin closed and a minimal environment. Before the program
starts, the child lowers its own limits (``resource.setrlimit``): address
space (``memory_mb``), CPU seconds, size of files it may write, open files,
and no core dumps. The parent enforces a wall-clock timeout and kills the
whole process group when it expires.

No network, two layers. (1) Where the kernel allows unprivileged user
namespaces (probed once per process: ``unshare --user --net``), the program
runs in a fresh network namespace: it has no interface but a loopback that is
down, so every connection, even to 127.0.0.1, fails with "Network is
unreachable", for the program and anything it starts. (2) Always, before the
program's first line, an audit hook (:func:`sys.addaudithook`, which cannot
be removed) refuses the events that reach the network or escape the hook:
creating a socket, name lookups, starting processes (``subprocess``,
``os.system``, ``os.exec*``, ``os.fork``, ``posix_spawn``) and loading native
code with ``ctypes``. The hook alone is a guard against code that tries the
network the ordinary way, not against code written to evade it; the namespace
is a kernel boundary. :func:`network_isolation` says which layers a machine gets.

This contains accidents (infinite loops, memory blow-ups, runaway output,
stray files, network calls); it is not a security boundary against hostile
code, which needs a container or VM. Limits use ``resource``, so POSIX only.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from crucible_core.errors import ConfigError

__all__ = [
    "ExecutionResult",
    "humaneval_program",
    "netns_prefix",
    "network_isolation",
    "run_program",
]

Status = Literal["passed", "failed", "timeout"]

# The child sets its own limits, then runs the program file. Setting limits in
# the child (not in preexec_fn) is safe when the parent runs threads.
_BOOTSTRAP = r"""
import resource, sys
def _deny(event, args, _blocked=frozenset((
    "socket.__new__", "socket.connect", "socket.bind", "socket.sendto", "socket.sendmsg",
    "socket.getaddrinfo", "socket.gethostbyname", "socket.gethostbyaddr",
    "socket.getnameinfo", "subprocess.Popen", "os.system", "os.exec", "os.posix_spawn",
    "os.spawn", "os.fork", "os.forkpty", "ctypes.dlopen", "ctypes.dlsym",
    "ctypes.call_function",
))):
    if event in _blocked:
        raise PermissionError(f"sandbox: {event} is not allowed (no network, no processes)")
sys.addaudithook(_deny)
del _deny
def _lim(which, value):
    soft, hard = resource.getrlimit(which)
    if hard != resource.RLIM_INFINITY:
        value = min(value, hard)
    resource.setrlimit(which, (value, value if hard == resource.RLIM_INFINITY else hard))
mem, cpu, fsize, nofile = (int(a) for a in sys.argv[1:5])
_lim(resource.RLIMIT_AS, mem)
_lim(resource.RLIMIT_CPU, cpu)
_lim(resource.RLIMIT_FSIZE, fsize)
_lim(resource.RLIMIT_NOFILE, nofile)
_lim(resource.RLIMIT_CORE, 0)
path = sys.argv[5]
with open(path, encoding="utf-8") as f:
    source = f.read()
sys.argv = [path]
code = compile(source, "program.py", "exec")
del _lim, mem, cpu, fsize, nofile, f
exec(code, {"__name__": "__main__", "__builtins__": __builtins__})
"""


@dataclass(frozen=True)
class ExecutionResult:
    """How a program ended: ``passed`` (exit 0), ``failed`` (error/exit != 0) or ``timeout``."""

    status: Status
    returncode: int | None
    detail: str
    seconds: float

    @property
    def passed(self) -> bool:
        return self.status == "passed"


def run_program(
    source: str,
    *,
    timeout: float = 10.0,
    memory_mb: int = 1024,
    max_file_mb: int = 16,
    max_open_files: int = 64,
    python: str | None = None,
    netns: bool | None = None,
) -> ExecutionResult:
    """Run ``source`` as a Python program under the limits above and report how it ended.

    ``netns``: run in a fresh network namespace (None: where the machine allows
    it, see :func:`network_isolation`; False: the audit hook alone).
    """
    if timeout <= 0:
        raise ConfigError(f"timeout must be > 0, got {timeout}")
    if memory_mb < 64:
        raise ConfigError(
            f"memory_mb must be at least 64 (Python needs it to start), got {memory_mb}"
        )
    cpu = max(1, int(timeout) + 1)
    with tempfile.TemporaryDirectory(prefix="crucible-exec-") as tmp:
        path = os.path.join(tmp, "program.py")
        with open(path, "w", encoding="utf-8") as f:
            f.write(source)
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "LANG": "C.UTF-8",
            "PYTHONHASHSEED": "0",
            "PYTHONDONTWRITEBYTECODE": "1",
            "HOME": tmp,
            "TMPDIR": tmp,
        }
        prefix = netns_prefix() if netns is None or netns else []
        if netns and not prefix:
            raise ConfigError(
                "netns=True: this machine cannot create a network namespace "
                "(unshare --user --net failed)",
                hint="leave netns unset to use it where available",
            )
        args = [
            *prefix,
            python or sys.executable,
            "-I",
            "-c",
            _BOOTSTRAP,
            str(memory_mb * 1024 * 1024),
            str(cpu),
            str(max_file_mb * 1024 * 1024),
            str(max_open_files),
            path,
        ]
        start = time.monotonic()
        proc = subprocess.Popen(
            args,
            cwd=tmp,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        try:
            _, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            proc.communicate()
            return ExecutionResult(
                "timeout", None, f"timed out after {timeout:g}s", time.monotonic() - start
            )
        finally:
            _kill_group(proc)
        seconds = time.monotonic() - start
    text = err.decode("utf-8", "replace").strip()
    if proc.returncode == 0:
        return ExecutionResult("passed", 0, "", seconds)
    detail = text.splitlines()[-1] if text else _signal_name(proc.returncode)
    return ExecutionResult("failed", proc.returncode, detail[-500:], seconds)


@functools.cache
def netns_prefix() -> list[str]:
    """The command prefix that runs a program in a new network namespace, or [] if none works."""
    unshare = shutil.which("unshare")
    if unshare is None:
        return []
    for prefix in (
        [unshare, "--user", "--net", "--map-current-user"],
        [unshare, "--user", "--net"],
    ):
        try:
            done = subprocess.run(
                [*prefix, sys.executable, "-I", "-c", ""],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                timeout=10,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired):
            continue
        if done.returncode == 0:
            return prefix
    return []


def network_isolation() -> list[str]:
    """The layers that keep a program off the network here: ``netns`` (if available), ``audit``."""
    return (["netns"] if netns_prefix() else []) + ["audit"]


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


def _signal_name(code: int | None) -> str:
    if code is not None and code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit status {code}"


def humaneval_program(problem: Mapping[str, object], completion: str) -> str:
    """The program HumanEval runs: prompt + completion + test + ``check(entry_point)``."""
    try:
        prompt = str(problem["prompt"])
        test = str(problem["test"])
        entry = str(problem["entry_point"])
    except KeyError as exc:
        raise ConfigError(
            f"a code problem needs prompt, test and entry_point; missing {exc.args[0]!r}",
            hint="pass HumanEval-format rows as references",
        ) from None
    return f"{prompt}{completion}\n\n{test}\n\ncheck({entry})\n"
