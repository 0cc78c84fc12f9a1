"""A small JSON-schema-like checker for the evaluation documents (``metrics.json``, ``policy_eval.json``).

Errors name the document and the dotted path of the bad field, e.g.
``metrics.json: models.base.wrist.psnr.per_step: expected a list of 14 numbers``.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Callable, Mapping


class SchemaError(ValueError):
    """An evaluation document does not follow its schema."""


def load_document(path: str | os.PathLike, filename: str, validate: Callable[[dict], None], command: str) -> dict:
    """Read and validate an evaluation document: ``path`` is the file or the folder holding ``filename``."""
    path = Path(path)
    if path.is_dir():
        path = path / filename
    if not path.is_file():
        raise FileNotFoundError(f"no {filename} at {path} (run {command} first)")
    doc = json.loads(path.read_text())
    validate(doc)
    return doc


class Checker:
    """Field checks that raise ``error`` (a :class:`SchemaError` subclass) prefixed with ``document``."""

    def __init__(self, document: str, error: type[SchemaError] = SchemaError) -> None:
        self.document, self.error = document, error

    def fail(self, path: str, message: str) -> None:
        raise self.error(f"{self.document}: {path}: {message}")

    def expect(self, doc: Any, key: str, kind: Any, path: str = "") -> Any:
        """``doc[key]``, which must exist and be of ``kind`` (``float`` = a finite number, ``int`` excludes bool)."""
        where = f"{path}.{key}" if path else key
        if not isinstance(doc, Mapping) or key not in doc:
            self.fail(where, "missing")
        value = doc[key]
        if kind is float:
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        elif kind is int:
            ok = isinstance(value, int) and not isinstance(value, bool)
        else:
            ok = isinstance(value, kind)
        if not ok:
            name = getattr(kind, "__name__", str(kind))
            self.fail(where, f"expected {name}, got {type(value).__name__} {str(value)[:60]!r}")
        return value

    def numbers(self, values: Any, length: int, path: str, low: float = -math.inf, high: float = math.inf) -> list:
        """A list of ``length`` finite numbers within [low, high]."""
        if not isinstance(values, list) or len(values) != length:
            got = f"length {len(values)}" if isinstance(values, list) else type(values).__name__
            self.fail(path, f"expected a list of {length} numbers, got {got}")
        for i, v in enumerate(values):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not low <= v <= high:
                self.fail(f"{path}[{i}]", f"expected a finite number in [{low}, {high}], got {v!r}")
        return values
