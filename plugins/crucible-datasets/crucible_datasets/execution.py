"""Run untrusted Python (model-written code) in a subprocess with a timeout and resource limits.

Each program runs in a fresh ``python -I`` (isolated mode: no user site, no
``PYTHON*`` variables) in its own session and an empty temporary working
directory, with stdin closed and a minimal environment. Before the program
starts, the child lowers its own limits (``resource.setrlimit``): address
space (``memory_mb``), CPU seconds, size of files it may write, open files,
and no core dumps. The parent enforces a wall-clock timeout and kills the
whole process group when it expires.

This contains accidents (infinite loops, memory blow-ups, runaway output,
stray files); it is not a security boundary against hostile code, which needs
a container or VM. Limits use ``resource``, so POSIX only.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from crucible_core.errors import ConfigError

__all__ = ["ExecutionResult", "humaneval_program", "run_program"]

Status = Literal["passed", "failed", "timeout"]

# The child sets its own limits, then runs the program file. Setting limits in
# the child (not in preexec_fn) is safe when the parent runs threads.
_BOOTSTRAP = r"""
import resource, sys
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
) -> ExecutionResult:
    """Run ``source`` as a Python program under the limits above and report how it ended."""
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
        args = [
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
