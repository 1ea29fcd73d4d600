"""Commands run as users run them, in a child process on a misbehaving machine: under a file-size
limit (RLIMIT_FSIZE, with SIGXFSZ ignored so the write gets EFBIG) or, when the suite runs as
root (who may write anywhere), without the capability to override permissions."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

__all__ = ["LIMIT_FSIZE", "as_unprivileged", "error_line", "leftovers", "run_child", "run_command"]

# the preamble of a child under a file-size limit of {limit} bytes
LIMIT_FSIZE = """
import resource, signal
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of a killed process
resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit}))
"""


def as_unprivileged() -> list[str]:
    """A command prefix under which permissions apply: root writes into read-only folders
    unless the child runs without the capability to override them."""
    if os.geteuid() != 0:
        return []
    if shutil.which("setpriv") is None:
        pytest.skip("running as root without setpriv: a read-only folder is writable")
    return ["setpriv", "--bounding-set=-dac_override,-dac_read_search,-fowner"]


def run_child(
    preamble: str,
    body: str,
    prefix: list[str] | None = None,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess:
    code = textwrap.dedent(preamble) + textwrap.dedent(body)
    cmd = [*(prefix or []), sys.executable, "-c", code]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)


RUN_MODULE = """
import runpy, sys
sys.argv = {argv!r}
runpy.run_module({module!r}, run_name="__main__")
"""


def run_command(
    module: str,
    args: list[str],
    preamble: str = "",
    prefix: list[str] | None = None,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess:
    """``python -m <module> <args>`` as a user runs it, in a child with ``preamble`` (a limit)
    or under the command ``prefix`` (unprivileged)."""
    body = RUN_MODULE.format(argv=[module, *args], module=module)
    return run_child(preamble, body, prefix, env)


def error_line(proc: subprocess.CompletedProcess) -> str:
    """The one line a command that failed on a user error ends with (exit 1, no traceback)."""
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    return proc.stderr.strip().splitlines()[-1]


def leftovers(folder: Path) -> list[str]:
    """Temporary files of a write, anywhere below ``folder``."""
    return sorted(p.name for p in folder.rglob("*.tmp"))
