"""The OpenAPI 3 document of the admin API (served at /api/openapi.json; a test validates
real responses against it)."""

from __future__ import annotations

from typing import Any

_ERROR = {
    "type": "object",
    "required": ["error", "detail"],
    "properties": {"error": {"type": "string"}, "detail": {"type": "string"}},
}
_NULLABLE_INT = {"type": "integer", "nullable": True}
_NULLABLE_NUMBER = {"type": "number", "nullable": True}
_IMAGE = {
    "type": "object",
    "required": ["name", "url", "size", "cached_bytes", "pinned", "verified", "last_access"],
    "properties": {
        "name": {"type": "string"},
        "url": {"type": "string"},
        "size": _NULLABLE_INT,
        "cached_bytes": {"type": "integer", "minimum": 0},
        "pinned": {"type": "boolean"},
        "verified": {"type": "boolean", "nullable": True},
        "last_access": {"type": "string", "nullable": True},
    },
}
_JOB = {
    "type": "object",
    "required": ["id", "state", "bytes_done", "bytes_total", "rate", "eta", "error"],
    "properties": {
        "id": {"type": "string"},
        "target": {"type": "object"},
        "range": {"type": "string", "nullable": True},
        "state": {"type": "string", "enum": ["queued", "running", "done", "failed", "cancelled"]},
        "bytes_done": {"type": "integer", "minimum": 0},
        "bytes_total": _NULLABLE_INT,
        "rate": _NULLABLE_NUMBER,
        "eta": _NULLABLE_NUMBER,
        "error": {"type": "string", "nullable": True},
        "status_url": {"type": "string"},
    },
}
_ORIGIN = {
    "type": "object",
    "required": ["name", "kind", "url"],
    "properties": {
        "name": {"type": "string"},
        "kind": {"type": "string"},
        "url": {"type": "string"},
    },
}
_CACHED = {
    "type": "object",
    "required": ["path", "size", "cached_bytes"],
    "properties": {
        "path": {"type": "string"},
        "size": {"type": "integer", "minimum": 0},
        "cached_bytes": {"type": "integer", "minimum": 0},
    },
}
_ATTACHMENT = {
    "type": "object",
    "required": ["id", "url", "etag", "size", "cached_bytes", "state", "error", "created"],
    "properties": {
        "id": {"type": "string"},
        "image": {"type": "string"},
        "path": {"type": "string"},
        "url": {"type": "string", "description": "serves exactly the attached version"},
        "etag": {"type": "string"},
        "size": {"type": "integer", "minimum": 0},
        "cached_bytes": {"type": "integer", "minimum": 0},
        "state": {"type": "string", "enum": ["prewarming", "ready", "incomplete", "detached"]},
        "error": {"type": "string", "nullable": True},
        "created": {"type": "string"},
        "prewarm_job": {"type": "string", "nullable": True},
    },
}


def _target_body(**extra: dict[str, str]) -> dict[str, Any]:
    """A JSON body naming an image or an origin path: {"image": NAME} or {"path": ...}."""
    properties = {"image": {"type": "string"}, "path": {"type": "string"}, **extra}
    schema = {"type": "object", "properties": properties}
    return {"required": True, "content": {"application/json": {"schema": schema}}}


def _json(schema: dict[str, Any], description: str = "OK") -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


_ERRORS = {
    str(code): _json(_ERROR, text)
    for code, text in [
        (400, "bad request"),
        (401, "token missing"),
        (403, "wrong token or URL outside origins"),
        (404, "not found"),
        (409, "conflict"),
        (502, "origin error"),
        (504, "origin timeout"),
    ]
}
_NAME = {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}
_ID = {"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}
_BEARER: list[dict[str, list[str]]] = [{"bearer": []}]


def _op(summary: str, responses: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"summary": summary, "responses": {**responses, **_ERRORS}, **extra}


OPENAPI: dict[str, Any] = {
    "openapi": "3.0.3",
    "info": {"title": "isocache admin API", "version": "1"},
    "components": {
        "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        "schemas": {
            "Error": _ERROR,
            "Image": _IMAGE,
            "PrewarmJob": _JOB,
            "Origin": _ORIGIN,
            "Cached": _CACHED,
        },
    },
    "paths": {
        "/api/images": {
            "get": _op(
                "Images and what is cached of them",
                {"200": _json({"type": "array", "items": _IMAGE})},
            )
        },
        "/api/images/{name}": {
            "put": _op(
                "Register an image at run time (persisted)",
                {"200": _json(_IMAGE), "201": _json(_IMAGE)},
                parameters=[_NAME],
                security=_BEARER,
                requestBody={
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "required": ["url"],
                                "properties": {
                                    "url": {"type": "string"},
                                    "sha256": {"type": "string", "pattern": "^[0-9a-fA-F]{64}$"},
                                    "pin": {"type": "boolean"},
                                },
                            }
                        }
                    },
                },
            ),
            "delete": _op(
                "Unregister a run-time image",
                {"200": _json({"type": "object"})},
                parameters=[_NAME],
                security=_BEARER,
            ),
        },
        "/api/images/{name}/cache": {
            "delete": _op(
                "Evict an image's chunks",
                {
                    "200": _json(
                        {"type": "object", "properties": {"evicted_chunks": {"type": "integer"}}}
                    )
                },
                parameters=[_NAME],
                security=_BEARER,
            )
        },
        "/api/images/{name}/pin": {
            "put": _op(
                "Pin an image", {"200": _json(_IMAGE)}, parameters=[_NAME], security=_BEARER
            ),
            "delete": _op(
                "Unpin an image", {"200": _json(_IMAGE)}, parameters=[_NAME], security=_BEARER
            ),
        },
        "/api/images/{name}/verify": {
            "post": _op(
                "Re-check cached chunks and the whole image's sha256",
                {
                    "200": _json(
                        {
                            "type": "object",
                            "required": ["chunks_ok", "chunks_dropped", "verified"],
                            "properties": {
                                "chunks_ok": {"type": "integer"},
                                "chunks_dropped": {"type": "integer"},
                                "verified": {"type": "boolean", "nullable": True},
                            },
                        }
                    )
                },
                parameters=[_NAME],
                security=_BEARER,
            )
        },
        "/api/prewarm": {
            "get": _op("Prewarm jobs", {"200": _json({"type": "array", "items": _JOB})}),
            "post": _op(
                "Start a prewarm job",
                {
                    "202": _json(
                        {
                            "type": "object",
                            "required": ["id", "status_url"],
                            "properties": {
                                "id": {"type": "string"},
                                "status_url": {"type": "string"},
                            },
                        }
                    )
                },
                security=_BEARER,
                requestBody=_target_body(range={"type": "string"}),
            ),
        },
        "/api/prewarm/{id}": {
            "get": _op("A prewarm job", {"200": _json(_JOB)}, parameters=[_ID]),
            "delete": _op(
                "Cancel a prewarm job", {"200": _json(_JOB)}, parameters=[_ID], security=_BEARER
            ),
        },
        "/api/attachments": {
            "get": _op("Attachments", {"200": _json({"type": "array", "items": _ATTACHMENT})}),
            "post": _op(
                "Attach an image's current version for a VM (pinned and prewarmed)",
                {"201": _json(_ATTACHMENT)},
                security=_BEARER,
                requestBody=_target_body(),
            ),
        },
        "/api/attachments/{id}": {
            "get": _op("An attachment", {"200": _json(_ATTACHMENT)}, parameters=[_ID]),
            "delete": _op(
                "Detach: release the pin (the URL serves what is still cached, then 410)",
                {"200": _json(_ATTACHMENT)},
                parameters=[_ID],
                security=_BEARER,
            ),
        },
        "/api/origins": {
            "get": _op(
                "Configured origins (credentials never shown)",
                {"200": _json({"type": "array", "items": _ORIGIN})},
            )
        },
        "/api/origins/{origin}/cached": {
            "get": _op(
                "What is cached of files under an origin whose version is known",
                {"200": _json({"type": "array", "items": _CACHED})},
                parameters=[
                    {**_NAME, "name": "origin"},
                    {
                        "name": "path",
                        "in": "query",
                        "required": True,
                        "description": "a file's path under the origin, decoded; repeatable",
                        "schema": {"type": "array", "items": {"type": "string"}, "maxItems": 100},
                        "style": "form",
                        "explode": True,
                    },
                ],
            )
        },
    },
}
