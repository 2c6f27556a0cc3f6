"""The admin API's OpenAPI document stays true: real responses validate against it, and
schemathesis fuzzing the running service finds no 5xx."""

from __future__ import annotations

import asyncio
import re
import sys
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import aiohttp
import jsonschema
import pytest

from bench.origin import OriginServer, generate_image
from isocache.admin.openapi import OPENAPI
from tests.conftest import CHUNK, MakeService, ProcessService, config_text

TOKEN = "fuzz-token"


def schema_for(path: str, method: str, status: int) -> dict[str, Any]:
    response = OPENAPI["paths"][path][method]["responses"][str(status)]
    schema: dict[str, Any] = response["content"]["application/json"]["schema"]
    return _nullable_to_jsonschema(schema)


def _nullable_to_jsonschema(schema: Any) -> Any:
    """OpenAPI 3.0's `nullable` is not JSON Schema: turn it into a type list."""
    if isinstance(schema, dict):
        out = {k: _nullable_to_jsonschema(v) for k, v in schema.items() if k != "nullable"}
        if schema.get("nullable") and "type" in schema:
            out["type"] = [schema["type"], "null"]
            if "enum" in out:
                out["enum"] = [*out["enum"], None]
        return out
    if isinstance(schema, list):
        return [_nullable_to_jsonschema(v) for v in schema]
    return schema


async def test_real_responses_validate(
    origin: OriginServer, make_service: MakeService, client: aiohttp.ClientSession
) -> None:
    origin.add_file("img.raw", generate_image(5 * CHUNK, seed=140))
    service = await make_service(origin.url, images={"img": "img.raw"})
    base = service.url

    async def check(method: str, url: str, path: str, status: int, body: Any = None) -> Any:
        async with client.request(method.upper(), base + url, json=body) as resp:
            assert resp.status == status, await resp.text()
            data = await resp.json()
        jsonschema.validate(data, schema_for(path, method, status))
        return data

    await check("get", "api/images", "/api/images", 200)
    job = await check("post", "api/prewarm", "/api/prewarm", 202, {"image": "img"})
    for _ in range(200):
        view = await check("get", f"api/prewarm/{job['id']}", "/api/prewarm/{id}", 200)
        if view["state"] == "done":
            break
        await asyncio.sleep(0.02)
    await check("get", "api/prewarm", "/api/prewarm", 200)
    await check("get", "api/images", "/api/images", 200)
    await check("put", "api/images/img/pin", "/api/images/{name}/pin", 200)
    await check("delete", "api/images/img/pin", "/api/images/{name}/pin", 200)
    await check("post", "api/images/img/verify", "/api/images/{name}/verify", 200)
    await check("delete", "api/images/img/cache", "/api/images/{name}/cache", 200)
    await check("put", "api/images/two", "/api/images/{name}", 201, {"url": origin.url + "img.raw"})
    await check("delete", "api/images/two", "/api/images/{name}", 200)
    attached = await check("post", "api/attachments", "/api/attachments", 201, {"image": "img"})
    await check("get", "api/attachments", "/api/attachments", 200)
    await check("get", f"api/attachments/{attached['id']}", "/api/attachments/{id}", 200)
    await check("delete", f"api/attachments/{attached['id']}", "/api/attachments/{id}", 200)
    await check("get", "api/attachments/nope", "/api/attachments/{id}", 404)
    await check("get", "api/prewarm/nope", "/api/prewarm/{id}", 404)
    await check("post", "api/prewarm", "/api/prewarm", 400, {"bogus": 1})


@pytest.mark.skipif(find_spec("schemathesis") is None, reason="schemathesis not installed")
@pytest.mark.timeout(300)
async def test_fuzzing_finds_no_server_errors(tmp_path: Path, origin: OriginServer) -> None:
    origin.add_file("img.raw", generate_image(3 * CHUNK, seed=141))
    path = tmp_path / "isocache.toml"
    path.write_text(
        config_text(
            origin.url,
            tmp_path / "cache",
            images={"img": "img.raw"},
            extra=f'[admin]\ntoken = "{TOKEN}"\n',
        )
    )
    proc = ProcessService(path)
    await proc.start()
    try:
        run = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "schemathesis.cli",
            "run",
            proc.url + "api/openapi.json",
            "--checks",
            "not_a_server_error",
            "-n",
            "25",
            "-H",
            f"Authorization: Bearer {TOKEN}",
            "--request-timeout",
            "20",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            cwd=tmp_path,  # schemathesis keeps a cache directory in its working directory
        )
        out, _ = await asyncio.wait_for(run.communicate(), 280)
        report = out.decode(errors="replace")
        assert run.returncode == 0, report[-4000:]
        counts = re.search(r"(\d+) generated, (\d+) passed", report)
        assert counts and counts.group(1) == counts.group(2) and int(counts.group(1)) > 100, report
    finally:
        await proc.stop()
