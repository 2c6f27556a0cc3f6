"""A real FTP server (pyftpdlib) on loopback, in a thread, with a log of commands and of the
bytes each RETR really sent, and a switch that drops a data connection mid-transfer. With a
certificate it is an FTPS server (explicit TLS, required on control and data connections).
Control connections can be ended as an idle timeout does (421, then close) or stalled (the
server reads commands and never answers, leaving the connection open)."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pyftpdlib.authorizers import DummyAuthorizer
from pyftpdlib.handlers import DTPHandler, FTPHandler
from pyftpdlib.servers import ThreadedFTPServer


@dataclass
class Retr:
    path: str
    offset: int
    sent: int = 0


@dataclass
class FtpLog:
    commands: list[tuple[str, str]] = field(default_factory=list)
    retrs: list[Retr] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    drop_after: int | None = None  # the next RETR's data connection closes after this many bytes
    live: set[Any] = field(default_factory=set)  # open control connections (handlers)

    def bytes_sent(self) -> int:
        with self.lock:
            return sum(r.sent for r in self.retrs)


class FtpServer:
    def __init__(
        self,
        root: Path,
        user: str = "iso",
        password: str = "s3cret-pw",
        tls_certfile: Path | None = None,  # PEM: key and certificate chain
    ) -> None:
        self.root = root
        self.tls = tls_certfile is not None
        dtp_base, handler_base = _handler_classes(self.tls)
        self.user = user
        self.password = password
        self.log = FtpLog()
        log = self.log

        class CountingDTP(dtp_base):  # type: ignore[misc, valid-type]
            retr: Retr | None = None

            def send(self, data: Any) -> int:
                if self.retr is None:  # the data connection was accepted after RETR
                    self.retr = getattr(self.cmd_channel, "pending_retr", None)
                if self.retr is not None and log.drop_after is not None:
                    room = log.drop_after - self.retr.sent
                    if room <= 0:
                        log.drop_after = None
                        self.close()
                        return 0
                    data = data[:room]
                sent = int(super().send(data))
                if self.retr is not None:
                    with log.lock:
                        self.retr.sent += sent
                return sent

        class LoggingHandler(handler_base):  # type: ignore[misc, valid-type]
            dtp_handler = CountingDTP
            # Set from the test's thread; acted on in this connection's own I/O loop thread.
            kicked = False  # answer 421 and close, as an idle timeout does
            muted = False  # read commands, never answer: a silently dead connection
            _watch: Any = None

            def handle(self) -> None:
                with log.lock:
                    log.live.add(self)
                self._watch = self.ioloop.call_every(0.02, self._check_kicked)
                super().handle()

            def _check_kicked(self) -> None:
                if self.kicked and not self._closing:
                    self.respond("421 Timeout.")
                    self.close_when_done()

            def close(self) -> None:
                with log.lock:
                    log.live.discard(self)
                if self._watch is not None and not self._watch.cancelled:
                    self._watch.cancel()
                super().close()

            def pre_process_command(self, line: str, cmd: str, arg: str) -> None:
                with log.lock:
                    log.commands.append((cmd, arg if cmd != "PASS" else "***"))
                if self.muted:
                    return
                super().pre_process_command(line, cmd, arg)

            def ftp_RETR(self, file: str) -> Any:
                retr = Retr(file, self._restart_position)
                with log.lock:
                    log.retrs.append(retr)
                self.pending_retr = retr
                if self.data_channel is not None:  # passive mode: usually connected already
                    self.data_channel.retr = retr
                return super().ftp_RETR(file)

        authorizer = DummyAuthorizer()
        authorizer.add_user(user, password, str(root), perm="elr")
        authorizer.add_anonymous(str(root), perm="elr")
        LoggingHandler.authorizer = authorizer
        LoggingHandler.use_sendfile = False  # so CountingDTP.send sees every byte
        LoggingHandler.auth_failed_timeout = 0.1  # pyftpdlib delays a failed login 3 s
        LoggingHandler.passive_ports = None
        LoggingHandler.permit_foreign_addresses = False
        if tls_certfile is not None:
            LoggingHandler.certfile = str(tls_certfile)
            LoggingHandler.tls_control_required = True
            LoggingHandler.tls_data_required = True
        self.server = ThreadedFTPServer(("127.0.0.1", 0), LoggingHandler)
        self.port = self.server.address[1]
        self._thread = threading.Thread(
            target=self.server.serve_forever,
            kwargs={"timeout": 0.1, "handle_exit": False},
            daemon=True,
        )

    def url(self, with_user: bool = True) -> str:
        user = f"{self.user}@" if with_user else ""
        return f"{'ftps' if self.tls else 'ftp'}://{user}127.0.0.1:{self.port}/"

    def sessions(self) -> int:
        """Open control connections."""
        with self.log.lock:
            return len(self.log.live)

    def logins(self) -> int:
        with self.log.lock:
            return sum(1 for cmd, _ in self.log.commands if cmd == "USER")

    def drop_sessions(self) -> int:
        """End every open control connection as an idle timeout does: 421, then close."""
        with self.log.lock:
            live = list(self.log.live)
        for handler in live:
            handler.kicked = True
        return len(live)

    def stall_sessions(self) -> int:
        """Stop answering every open control connection, without closing it (no FIN, no RST):
        what a client sees when a firewall silently forgets the connection."""
        with self.log.lock:
            live = list(self.log.live)
        for handler in live:
            handler.muted = True
        return len(live)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self.server.close_all()
        self._thread.join(5)


def _handler_classes(tls: bool) -> tuple[type, type]:
    if not tls:
        return DTPHandler, FTPHandler
    # pyftpdlib's TLS classes need pyOpenSSL, imported only for an FTPS server.
    from pyftpdlib.handlers import TLS_DTPHandler, TLS_FTPHandler

    return TLS_DTPHandler, TLS_FTPHandler
