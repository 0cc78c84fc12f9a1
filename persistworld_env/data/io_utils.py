"""Small file helpers shared by the writer, the reader and the frame cache.

Every file the pipeline produces is written through :func:`atomic_path`: a temporary sibling file
is written first and moved into place with ``os.replace``, so a reader (or a resumed writer)
never sees a half-written file under its final name.
"""
from __future__ import annotations

import contextlib
import json
import os
import uuid
import warnings
from pathlib import Path
from typing import Any, Iterator

from persistworld_env.data.errors import DatasetError


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, fsync: bool = False) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success move it onto ``path`` atomically.

    The temporary name keeps the final suffix (``x.tmp-<pid>-<rand>.mp4``) so tools that guess the
    format from the extension still work. On error the temporary file is removed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.stem}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}{path.suffix}")
    try:
        yield tmp
        if fsync:
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` atomically (tmp file + ``os.replace``)."""
    with atomic_path(path, fsync=True) as tmp:
        tmp.write_text(text)


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as indented JSON to ``path`` atomically (tmp file + ``os.replace``)."""
    write_text_atomic(path, json.dumps(obj, indent=4) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    """Read a JSON file, raising :class:`DatasetError` naming the file if it is missing or malformed."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"missing file: {path}")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DatasetError(f"malformed JSON in {path}: {e}") from e


def read_jsonl(path: str | os.PathLike, allow_torn_tail: bool = True) -> list[dict]:
    """Read a JSON-lines file into a list of dicts.

    A malformed line raises :class:`DatasetError` naming the file and line number. The one exception
    is a *torn tail*: a last line without its terminating newline that does not parse, which is what
    an interrupted append leaves behind. With ``allow_torn_tail`` it is skipped with a warning (the
    record it held was never committed); otherwise it is an error too.
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"missing file: {path}")
    text = path.read_text()
    lines = text.split("\n")
    records: list[dict] = []
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            if not isinstance(rec, dict):
                raise ValueError(f"expected a JSON object, got {type(rec).__name__}")
        except ValueError as e:
            is_tail = lineno == len(lines) and not text.endswith("\n")
            if is_tail and allow_torn_tail:
                warnings.warn(f"{path}:{lineno}: ignoring an incomplete last line (interrupted write)")
                continue
            raise DatasetError(f"{path}:{lineno}: malformed JSON line ({e}): {line[:120]!r}") from e
        records.append(rec)
    return records


def append_jsonl(path: str | os.PathLike, record: dict) -> None:
    """Append one JSON object as a line and make it durable (flush + fsync) before returning."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()
        os.fsync(f.fileno())


def write_jsonl_atomic(path: str | os.PathLike, rows: list[dict]) -> None:
    """Rewrite a JSON-lines file atomically with ``rows``."""
    write_text_atomic(path, "".join(json.dumps(r) + "\n" for r in rows))


def truncate_torn_tail(path: str | os.PathLike) -> bool:
    """Cut a trailing partial line (no final newline) off a JSON-lines file. Returns True if cut."""
    path = Path(path)
    if not path.is_file():
        return False
    data = path.read_bytes()
    if not data or data.endswith(b"\n"):
        return False
    keep = data[: data.rfind(b"\n") + 1]
    with atomic_path(path, fsync=True) as tmp:
        tmp.write_bytes(keep)
    return True
