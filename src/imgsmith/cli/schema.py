"""`imgsmith schema`: the JSON Schema of definition files, for editor completion and CI linting."""

from __future__ import annotations

import argparse
import json
from typing import Any

from .commands import SUMMARIES


def definition_schema() -> dict[str, Any]:
    """The pydantic model's schema, with each step spelled out from the operation registry."""
    from ..clouds import ready as _cloud_ready  # noqa: F401 -- registers `cloud-ready` in the registry
    from ..definition.model import Definition
    from ..ops import CUSTOMIZE_OPERATIONS
    schema = Definition.model_json_schema(by_alias=True)
    steps = {"type": "object", "minProperties": 1, "maxProperties": 1, "additionalProperties": False,
             "properties": {name: cls.yaml_schema() for name, cls in sorted(CUSTOMIZE_OPERATIONS.items())}}
    layer = schema.get("$defs", {}).get("Layer", {})
    if "properties" in layer:
        layer["properties"]["steps"] = {"type": "array", "minItems": 1, "items": steps}
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "imgsmith image definition"
    return schema


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("schema", help=SUMMARIES["schema"],
                       description="Print the JSON Schema of imgsmith definition files. Point your editor's "
                                   "YAML language server at it for completion and validation.")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    print(json.dumps(definition_schema(), indent=2))
    return 0
