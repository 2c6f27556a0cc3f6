"""Start and stop the processes a benchmark needs, all on loopback: the throttled origin,
isocache, nginx. Every process started is stopped on exit, error or Ctrl-C."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def wait_for_line(proc: subprocess.Popen[str], marker: str, timeout: float = 30.0) -> str:
    """Read the child's stdout until a line containing `marker`; return that line."""
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if marker in line:
            return line.strip()
        if not line and proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited {proc.returncode} before {marker!r}")
    raise TimeoutError(f"{proc.args!r} did not print {marker!r}")


def wait_http(url: str, timeout: float = 30.0, ok_statuses: tuple[int, ...] = ()) -> None:
    """Poll `url` until it answers 2xx (or one of `ok_statuses`)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except urllib.error.HTTPError as exc:
            if exc.code in ok_statuses:
                return
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def stop(proc: subprocess.Popen[str] | subprocess.Popen[bytes]) -> None:
    """SIGTERM (which `timeout` passes on to its command), then SIGKILL after 10 s."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextlib.contextmanager
def origin(
    files: dict[str, Path], *, per_connection_rate: str | None = None, latency: str | None = None
) -> Iterator[str]:
    """bench.origin in its own process; yields its base URL."""
    args = [sys.executable, "-m", "bench.origin"]
    for name, path in files.items():
        args += ["--file", f"{name}={path}"]
    if per_connection_rate:
        args += ["--per-connection-rate", per_connection_rate]
    if latency:
        args += ["--latency", latency]
    proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        line = wait_for_line(proc, "listening on ")
        yield line.split("listening on ", 1)[1].strip()
    finally:
        stop(proc)


@contextlib.contextmanager
def isocache(config_text: str, workdir: Path) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """isocache serve with `config_text`, logging to workdir/isocache.log; yields (URL, process)."""
    config = workdir / "isocache.toml"
    config.write_text(config_text)
    log_path = workdir / "isocache.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "isocache", "serve", "--config", str(config)],
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 30
        while True:
            text = log_path.read_text(errors="replace")
            if "listening on " in text:
                url = text.split("listening on ", 1)[1].split()[0]
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"isocache did not start:\n{text}")
            time.sleep(0.05)
        yield url, proc
    finally:
        stop(proc)


NGINX_STATIC = """
worker_processes {workers};
daemon off;
error_log {dir}/error.log warn;
pid {dir}/nginx.pid;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 100000;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    server {{
        listen 127.0.0.1:{port};
        root {root};
    }}
}}
"""


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def nginx(conf_text: str, workdir: Path) -> Iterator[None]:
    """nginx from Debian in the foreground with `conf_text`."""
    binary = shutil.which("nginx") or "/usr/sbin/nginx"
    if not os.path.exists(binary):
        raise RuntimeError("nginx is not installed: apt-get install nginx-light")
    conf = workdir / "nginx.conf"
    conf.write_text(conf_text)
    proc = subprocess.Popen([binary, "-c", str(conf), "-p", str(workdir)], text=True)
    try:
        yield
    finally:
        stop(proc)
