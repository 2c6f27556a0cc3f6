"""contrib/grafana-dashboard.json against a real Prometheus (Debian's `prometheus`) scraping a
running isocache on loopback: every query of every panel, and the $instance variable, return
data, and the ratios are ratios."""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from bench.origin import OriginServer, generate_image
from tests.conftest import CHUNK, MakeService, fetch

ROOT = Path(__file__).resolve().parent.parent
PROMETHEUS = shutil.which("prometheus")
pytestmark = pytest.mark.skipif(
    PROMETHEUS is None, reason="needs Debian's prometheus package (.ci/run installs it)"
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def dashboard_queries() -> list[tuple[str, str, str]]:
    """(panel title, legend, PromQL) with $instance as Grafana's "All" sends it."""
    dashboard = json.loads((ROOT / "contrib" / "grafana-dashboard.json").read_text())
    return [
        (panel["title"], target["legendFormat"], target["expr"].replace("$instance", ".*"))
        for panel in dashboard["panels"]
        for target in panel["targets"]
    ]


async def query(client: aiohttp.ClientSession, base: str, expr: str) -> list[dict[str, Any]]:
    async with client.get(base + "api/v1/query", params={"query": expr}) as resp:
        body = await resp.json()
    assert resp.status == 200 and body["status"] == "success", (expr, body)
    return list(body["data"]["result"])


async def test_every_panel_returns_data_from_a_real_prometheus(
    tmp_path: Path,
    origin: OriginServer,
    make_service: MakeService,
    client: aiohttp.ClientSession,
) -> None:
    data = generate_image(24 * CHUNK + 9, seed=190)
    origin.add_file("img.iso", data)
    service = await make_service(origin.url, images={"img": "img.iso"})
    target = f"127.0.0.1:{service.port}"
    (tmp_path / "prometheus.yml").write_text(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        f"scrape_configs:\n  - job_name: isocache\n    static_configs:\n"
        f"      - targets: ['{target}']\n"
    )
    port = free_port()
    assert PROMETHEUS is not None
    with open(tmp_path / "prometheus.log", "wb") as log:
        prometheus = subprocess.Popen(
            [
                PROMETHEUS,
                f"--config.file={tmp_path / 'prometheus.yml'}",
                f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--log.level=warn",
            ],
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
    base = f"http://127.0.0.1:{port}/"
    prom = aiohttp.ClientSession()  # one that decompresses: Prometheus answers gzip
    try:
        # Traffic while Prometheus scrapes: a cold read (misses), warm reads (hits), small
        # ranges, HEADs; until every query of the dashboard has an answer.
        queries = dashboard_queries()
        assert len(queries) >= 20
        deadline = time.monotonic() + 60
        empty: list[tuple[str, str, str]] = queries
        results: dict[str, list[dict[str, Any]]] = {}
        rounds = 0
        while empty:
            assert prometheus.poll() is None, (tmp_path / "prometheus.log").read_text()
            assert time.monotonic() < deadline, (
                f"no data for {[(t, legend) for t, legend, _ in empty]}"
            )
            if rounds % 3 == 0:  # misses while Prometheus watches, not only before
                async with client.delete(service.url + "api/images/img/cache") as resp:
                    assert resp.status == 200
            rounds += 1
            assert (await fetch(client, service.url + "images/img"))[2] == data
            assert (await fetch(client, service.url + "images/img"))[2] == data
            await fetch(client, service.url + "images/img", {"Range": "bytes=0-4095"})
            async with client.head(service.url + "images/img") as resp:
                assert resp.status == 200
            await asyncio.sleep(0.5)  # not a synchronisation: traffic spread over scrapes
            try:
                for _, _, expr in empty:
                    results[expr] = await query(prom, base, expr)
            except aiohttp.ClientConnectionError:
                continue  # Prometheus still starting
            empty = [q for q in empty if not results[q[2]]]

        # Every query once more at one moment: each is about this instance, and the ratios
        # are ratios.
        for _, _, expr in queries:
            results[expr] = await query(prom, base, expr)
            assert results[expr], expr
        for title, legend, expr in queries:
            for series in results[expr]:
                assert series["metric"]["instance"] == target, (title, legend, series)
        by_title = {(title, legend): results[expr] for title, legend, expr in queries}
        (offload,) = by_title[("Origin offload", "{{instance}}")]
        # Every round reads the image twice and every third round fetches it once: 5/6
        # offloaded over three rounds, about half when the rate window holds only a round
        # with a fetch (seen: exactly 0.5 in a CI run), all of it when it holds no fetch.
        assert 0.4 < float(offload["value"][1]) <= 1
        (hits,) = by_title[("Chunk hit ratio", "{{instance}} hits")]
        assert 0.4 < float(hits["value"][1]) <= 1
        (fill,) = by_title[("Cache fill", "{{instance}} of size_limit")]
        assert 0 <= float(fill["value"][1]) <= len(data) / (64 * 1024 * 1024)

        # The $instance variable's query finds this instance.
        async with prom.get(
            base + "api/v1/label/instance/values", params={"match[]": "isocache_build_info"}
        ) as resp:
            assert (await resp.json())["data"] == [target]
    finally:
        await prom.close()
        prometheus.terminate()
        prometheus.wait(timeout=15)
