"""Kurento's interface definitions (../shared/kurento/*.kmd.json), for checking requests.

Test-only: the product does not read these files. A missing shared/ folder fails the test.
"""

from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

KMD_DIR = Path(__file__).resolve().parents[2] / "shared" / "kurento"


@dataclass
class KmdClass:
    name: str
    extends: str | None
    constructor: list[dict[str, Any]] = field(default_factory=list)
    methods: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    properties: list[dict[str, Any]] = field(default_factory=list)
    events: list[str] = field(default_factory=list)


def _load(path: Path) -> dict[str, Any]:
    text = re.sub(r"//[^\n\"]*$", "", path.read_text(), flags=re.M)
    return json.loads(text, strict=False)  # type: ignore[no-any-return]


class Kmd:
    def __init__(self, directory: Path = KMD_DIR) -> None:
        files = sorted(directory.glob("*.kmd.json"))
        if not files:
            pytest.fail(f"no kmd.json files in {directory}: shared/ must sit beside the checkout")
        self.classes: dict[str, KmdClass] = {}
        for path in files:
            for c in _load(path).get("remoteClasses", []):
                self.classes[c["name"]] = KmdClass(
                    name=c["name"], extends=c.get("extends"),
                    constructor=(c.get("constructor") or {}).get("params", []),
                    methods={m["name"]: m.get("params", []) for m in c.get("methods", [])},
                    properties=c.get("properties", []), events=c.get("events", []))

    def lineage(self, name: str) -> list[KmdClass]:
        out = []
        cls = self.classes.get(name)
        while cls is not None:
            out.append(cls)
            cls = self.classes.get(cls.extends) if cls.extends else None
        return out

    def operation(self, class_name: str, op: str) -> list[dict[str, Any]] | None:
        """Params of an invokable operation (a method, or a property getter/setter)."""
        for cls in self.lineage(class_name):
            if op in cls.methods:
                return cls.methods[op]
            for prop in cls.properties:
                cap = prop["name"][0].upper() + prop["name"][1:]
                if op == "get" + cap:
                    return []
                if op == "set" + cap and not prop.get("readOnly") and not prop.get("final"):
                    return [{"name": prop["name"], "type": prop["type"]}]
        return None

    def events(self, class_name: str) -> set[str]:
        return {e for cls in self.lineage(class_name) for e in cls.events}

    def check_params(self, declared: list[dict[str, Any]], given: dict[str, Any],
                     what: str) -> list[str]:
        names = {p["name"] for p in declared}
        problems = [f"{what}: unknown parameter {k!r}" for k in given if k not in names]
        problems += [f"{what}: missing required {p['name']!r}" for p in declared
                     if not p.get("optional") and p["name"] not in given]
        return problems

    def check_invoke(self, class_name: str, op: str, params: dict[str, Any]) -> list[str]:
        declared = self.operation(class_name, op)
        if declared is None:
            return [f"{class_name} has no operation {op!r}"]
        return self.check_params(declared, params, f"{class_name}.{op}")

    def check_create(self, class_name: str, params: dict[str, Any]) -> list[str]:
        cls = self.classes.get(class_name)
        if cls is None:
            return [f"no class {class_name!r}"]
        return self.check_params(cls.constructor, params, f"new {class_name}")


@functools.cache
def kmd() -> Kmd:
    return Kmd()
