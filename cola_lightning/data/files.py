"""Reading local text and jsonl files, with errors that name the file and line."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path


def existing_file(path: str | Path) -> Path:
    """The path, if it is a file; otherwise an error that says so."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"Data file not found: {path}. Check the path in the data config.")
    return path


def read_jsonl(path: str | Path) -> Iterator[tuple[int, dict]]:
    """Yields (line number, object) for every non-blank line; a bad line is an error."""
    path = existing_file(path)
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(
                    f"{path}:{number}: not valid JSON ({error.msg}). Each line of a .jsonl file "
                    "must be one JSON object."
                ) from None
            if not isinstance(record, dict):
                raise ValueError(
                    f"{path}:{number}: expected a JSON object, got {type(record).__name__}."
                )
            yield number, record


def read_field(path: str | Path, number: int, record: dict, field: str) -> str:
    """record[field] as a string, or an error naming file, line and the fields present."""
    if field not in record:
        raise KeyError(
            f"{path}:{number}: no field {field!r} (fields: {sorted(record)}). Set the data "
            "module's field name to the one your file uses."
        )
    value = record[field]
    if not isinstance(value, str):
        raise ValueError(f"{path}:{number}: field {field!r} is {type(value).__name__}, not text.")
    return value


def read_documents(path: str | Path, text_field: str = "text") -> list[str]:
    """Documents of a .txt file (separated by blank lines) or a .jsonl file (one per line)."""
    path = existing_file(path)
    if path.suffix == ".jsonl":
        return [read_field(path, n, record, text_field) for n, record in read_jsonl(path)]
    if path.suffix == ".txt":
        text = path.read_text(encoding="utf-8")
        return [block.strip() for block in text.split("\n\n") if block.strip()]
    raise ValueError(f"{path}: unsupported file type {path.suffix!r}; use .txt or .jsonl.")
