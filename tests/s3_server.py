"""moto's standalone S3 server on loopback, in its own process, enforcing SigV4 signatures.

With INITIAL_NO_AUTH_ACTION_COUNT, moto checks every request after the first few against
IAM: the access key must exist and the signature must match. The setup spends those few
unauthenticated actions creating a user with a key; everything after is signed.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from typing import Any

import botocore.session

REGION = "us-east-1"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class S3Server:
    """`enforce_auth=False` runs moto without IAM checks: its signature check recomputes the
    canonical request from a decoded query string, so it rejects every correctly signed
    request whose query holds "%2F" (botocore's own ListObjectsV2 with a prefix included)."""

    def __init__(self, *, enforce_auth: bool = True) -> None:
        self.enforce_auth = enforce_auth
        self.port = _free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.key_id = ""
        self.secret = ""

    def start(self) -> None:
        env = {**os.environ, "AWS_ACCESS_KEY_ID": "setup", "AWS_SECRET_ACCESS_KEY": "setup"}
        if self.enforce_auth:
            env["INITIAL_NO_AUTH_ACTION_COUNT"] = "3"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(self.endpoint + "/moto-api/", timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise RuntimeError("moto server did not start") from None
                time.sleep(0.1)
        iam = self.client("iam", "setup", "setup")
        iam.create_user(UserName="isocache")
        iam.put_user_policy(
            UserName="isocache",
            PolicyName="s3",
            PolicyDocument='{"Version": "2012-10-17", "Statement": '
            '[{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}',
        )
        key = iam.create_access_key(UserName="isocache")["AccessKey"]
        self.key_id, self.secret = key["AccessKeyId"], key["SecretAccessKey"]

    def client(
        self, service: str = "s3", key_id: str | None = None, secret: str | None = None
    ) -> Any:
        session = botocore.session.get_session()
        return session.create_client(
            service,
            endpoint_url=self.endpoint,
            region_name=REGION,
            aws_access_key_id=key_id or self.key_id,
            aws_secret_access_key=secret or self.secret,
        )

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
