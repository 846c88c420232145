"""OpenAI's own schemas (tests/data/openai-schemas.json, cut from openai-openapi.json), for tests to check what
the server sends: `check(instance, "CreateChatCompletionResponse")`. Importable from any test module (pytest puts
tests/ on the path: it has conftest.py and no __init__.py)."""

import json
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator
from referencing import Registry, Resource

DOCUMENT = json.loads((Path(__file__).parent / "data" / "openai-schemas.json").read_text())


def _nullable(node: Any) -> Any:
    """OpenAPI 3.0's `nullable: true`, which the document still uses in places, as JSON Schema says it."""
    if isinstance(node, list):
        return [_nullable(item) for item in node]
    if not isinstance(node, dict):
        return node
    node = {key: _nullable(value) for key, value in node.items()}
    if node.pop("nullable", False):
        if "enum" in node:
            node["enum"] = [*node["enum"], None]
        node = {"anyOf": [node, {"type": "null"}]}
    return node


def _completion_chunk(response: dict[str, Any]) -> dict[str, Any]:
    """The document says streamed completions share the response's shape; OpenAI's own streams (and ours) say
    `finish_reason: null` until a choice ends, which that shape does not allow: the one difference admitted."""
    chunk = json.loads(json.dumps(response))
    reason = chunk["properties"]["choices"]["items"]["properties"]["finish_reason"]
    chunk["properties"]["choices"]["items"]["properties"]["finish_reason"] = {"anyOf": [reason, {"type": "null"}]}
    return chunk


SCHEMAS = _nullable(DOCUMENT)["components"]["schemas"]
SCHEMAS["CompletionChunk"] = _completion_chunk(SCHEMAS["CreateCompletionResponse"])
REGISTRY = Registry().with_resource("urn:openai", Resource.opaque({"components": {"schemas": SCHEMAS}}))


def check(instance: Any, schema: str) -> None:
    found = problems(instance, schema)
    assert not found, (schema, found, instance)


def problems(instance: Any, schema: str) -> list[str]:
    validator = Draft202012Validator({"$ref": f"urn:openai#/components/schemas/{schema}"}, registry=REGISTRY)
    return [f"{'/'.join(map(str, error.absolute_path))}: {error.message}" for error in validator.iter_errors(instance)]
