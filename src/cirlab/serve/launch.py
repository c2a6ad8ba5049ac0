"""Start ``cirlab serve`` as a child process on a free loopback port and wait until it answers
(tests and the load benchmark use it; so can scripts that drive the HTTP API)."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from cirlab.errors import CirlabError


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(args: list[str], env: dict | None = None, log: str | Path | None = None,
                 timeout: float = 180) -> tuple[subprocess.Popen, str]:
    """``cirlab serve ARGS --port P`` on 127.0.0.1; returns (process, base URL) once ``/health`` answers 200.
    Output goes to ``log`` (default: discarded); a server that exits or stays silent is killed and reported."""
    port = free_port()
    out = open(log, "w") if log else subprocess.DEVNULL
    try:
        proc = subprocess.Popen([sys.executable, "-m", "cirlab.cli", "serve", *map(str, args), "--port", str(port)],
                                env=env, stdout=out, stderr=subprocess.STDOUT)
    finally:
        if log:
            out.close()  # the child holds its own copy of the handle
    base = f"http://127.0.0.1:{port}"
    deadline = time.time() + timeout
    while True:
        try:
            with urllib.request.urlopen(base + "/health", timeout=2) as r:
                if r.status == 200:
                    return proc, base
        except OSError:
            pass
        if proc.poll() is not None or time.time() > deadline:
            proc.kill()
            tail = Path(log).read_text()[-2000:] if log else ""
            raise CirlabError(f"cirlab serve did not start (exit {proc.poll()}): {tail}")
        time.sleep(0.3)


def stop_server(proc: subprocess.Popen, timeout: float = 20) -> None:
    """Stop a server from :func:`start_server`: SIGTERM (uvicorn shuts down cleanly), SIGKILL after ``timeout`` s."""
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
