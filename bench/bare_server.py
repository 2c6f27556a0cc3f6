"""The platform's ceiling for a Python hit: aiohttp's low-level server, one Range parse and
os.sendfile on the file, nothing else. Not isocache: a yardstick for bench/hits.py.

    python bench/bare_server.py IMAGE PORT
"""

from __future__ import annotations

import asyncio
import os
import sys

from aiohttp import web


async def main(path: str, port: int) -> None:
    fd = os.open(path, os.O_RDONLY)
    size = os.fstat(fd).st_size

    async def handler(request: web.BaseRequest) -> web.StreamResponse:
        header = request.headers.get("Range", "")
        first, _, last = header.removeprefix("bytes=").partition("-")
        start = int(first) if first else 0
        stop = int(last) + 1 if last else size
        response = web.StreamResponse(status=206 if header else 200)
        response.content_length = stop - start
        response.headers["Content-Range"] = f"bytes {start}-{stop - 1}/{size}"
        if "User-Agent" not in request.headers:
            response.force_close()
        await response.prepare(request)
        transport = request.transport
        assert transport is not None
        sock = transport.get_extra_info("socket")
        offset = start
        loop = asyncio.get_running_loop()
        while offset < stop:
            try:
                offset += os.sendfile(sock.fileno(), fd, offset, stop - offset)
            except BlockingIOError:
                waiter = loop.create_future()
                loop.add_writer(sock.fileno(), waiter.set_result, None)
                try:
                    await waiter
                finally:
                    loop.remove_writer(sock.fileno())
        return response

    server = web.Server(handler)
    runner = web.ServerRunner(server)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2])))
