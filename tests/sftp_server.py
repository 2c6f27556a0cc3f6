"""A real OpenSSH sshd (Debian's openssh-server) on a loopback port for the test suite, with
its own config, host key, user key and authorized_keys in a temporary directory, serving
SFTP by internal-sftp.

sshd cannot count the bytes it serves here (internal-sftp logs them only to syslog, which a
test machine may not run), so the tests put a TCP relay between isocache and sshd that
counts them on the wire, and can cut a session in the middle of a transfer.
"""

from __future__ import annotations

import asyncio
import os
import pwd
import shutil
import socket
import subprocess
import time
from pathlib import Path


def sshd_missing() -> str | None:
    """Why a real sshd cannot run here (for pytest.skip), or None."""
    for binary in ("/usr/sbin/sshd", shutil.which("ssh-keygen")):
        if not binary or not os.access(binary, os.X_OK):
            return "openssh-server is not installed (.ci/run installs it)"
    return None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _keygen(path: Path, kind: str = "ed25519") -> None:
    subprocess.run(
        ["ssh-keygen", "-q", "-t", kind, "-N", "", "-C", "isocache-test", "-f", str(path)],
        check=True,
    )


class Sshd:
    """`sshd -D -e` with a config of its own. `user` is the account running the tests (sshd
    lets a non-root sshd log in only as itself)."""

    def __init__(self, root: Path, *, password_auth: bool = False) -> None:
        self.root = root
        self.password_auth = password_auth
        self.user = pwd.getpwuid(os.getuid()).pw_name
        self.port = 0
        self.host_key = root / "ssh_host_ed25519_key"
        self.user_key = root / "id_ed25519"
        self.known_hosts = root / "known_hosts"
        self.log_path = root / "sshd.log"
        self._proc: subprocess.Popen[bytes] | None = None

    def _config(self) -> Path:
        config = self.root / "sshd_config"
        config.write_text(
            "\n".join(
                [
                    f"HostKey {self.host_key}",
                    f"PidFile {self.root / 'sshd.pid'}",
                    f"AuthorizedKeysFile {self.root / 'authorized_keys'}",
                    # tmp_path's parents are not root-owned 0755 everywhere.
                    "StrictModes no",
                    "PermitRootLogin yes",
                    f"PasswordAuthentication {'yes' if self.password_auth else 'no'}",
                    "KbdInteractiveAuthentication no",
                    "UsePAM no",
                    "LogLevel INFO",
                    "Subsystem sftp internal-sftp",
                    # Many sessions at once from one test: no throttling of unauthenticated ones.
                    "MaxStartups 100",
                    "MaxSessions 100",
                ]
            )
            + "\n"
        )
        return config

    async def start(self, timeout: float = 20.0) -> None:
        _keygen(self.host_key)
        _keygen(self.user_key)
        (self.root / "authorized_keys").write_bytes(self.user_key.with_suffix(".pub").read_bytes())
        # sshd needs its privilege separation directory (created by systemd when installed).
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
        self.port = _free_port()
        host_pub = self.host_key.with_suffix(".pub").read_text().split()
        self.known_hosts.write_text(f"[127.0.0.1]:{self.port} {host_pub[0]} {host_pub[1]}\n")
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child
        self._proc = subprocess.Popen(
            [
                "/usr/sbin/sshd",
                "-D",
                "-e",
                "-f",
                str(self._config()),
                "-p",
                str(self.port),
                "-o",
                "ListenAddress=127.0.0.1",
            ],
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while True:
            if self._proc.poll() is not None:
                raise RuntimeError(f"sshd exited {self._proc.returncode}:\n{self.log()}")
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", self.port)
                writer.close()
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"sshd did not listen:\n{self.log()}") from None
                await asyncio.sleep(0.05)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def known_hosts_for(self, port: int) -> str:
        """A known_hosts line for this server's key on another port (a relay in front)."""
        key = self.host_key.with_suffix(".pub").read_text().split()
        return f"[127.0.0.1]:{port} {key[0]} {key[1]}\n"

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            # The session processes are in sshd's process group (start_new_session).
            os.killpg(self._proc.pid, 15)
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self._proc.pid, 9)
                self._proc.wait()


class Relay:
    """Relays TCP connections to `target_port` and counts the bytes the server sent (SSH
    framing included: the wire count of what isocache fetched). The first `cuts`
    connections are reset after `cut_after` bytes from the server."""

    def __init__(self, target_port: int, *, cut_after: int = 0, cuts: int = 0) -> None:
        self.target_port = target_port
        self.cut_after = cut_after
        self.cuts_left = cuts
        self.connections = 0
        self.cut = 0
        self.bytes_down = 0
        self.port = 0
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        limit = None
        if self.cuts_left > 0:
            self.cuts_left -= 1
            limit = self.cut_after
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)

        async def pump(
            src: asyncio.StreamReader, dst: asyncio.StreamWriter, limit: int | None, down: bool
        ) -> None:
            sent = 0
            try:
                while data := await src.read(65536):
                    if limit is not None and sent + len(data) > limit:
                        dst.write(data[: limit - sent])
                        self.cut += 1
                        writer.transport.abort()
                        up_writer.transport.abort()
                        return
                    sent += len(data)
                    if down:
                        self.bytes_down += len(data)
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                dst.close()

        await asyncio.gather(
            pump(reader, up_writer, None, False), pump(up_reader, writer, limit, True)
        )

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
