"""Run a command as a child process and measure its wall time and its own peak resident memory."""

import os
import subprocess
import tempfile
import time
from dataclasses import dataclass


@dataclass(frozen=True)
class ChildRun:
    command: list[str]
    seconds: float
    peak_mb: float  # the child's own peak resident set: ru_maxrss from wait4 on that child alone
    returncode: int
    output: str


def run_child(command: list[str], env: dict[str, str] | None = None) -> ChildRun:
    """Run `command` to its end, stdout and stderr captured together."""
    with tempfile.TemporaryFile("w+") as log:
        started = time.perf_counter()
        process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, text=True)
        # wait4 rather than Popen.wait: it returns the resource usage of this child alone.
        _, status, usage = os.wait4(process.pid, 0)
        seconds = time.perf_counter() - started
        process.returncode = os.waitstatus_to_exitcode(status)
        log.seek(0)
        output = log.read()
    return ChildRun(command, round(seconds, 1), round(usage.ru_maxrss / 1024, 1), process.returncode, output)
