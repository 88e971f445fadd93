"""A ratings file's format, told from its name and first line before anything is parsed:
Parquet or text (by suffix), the text encoding, the field separator (`_detect_sep`), the
header names of each role (`_role_of`), and so which field holds the user, item, rating and
timestamp (`_column_positions`)."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from probmf.data.io.errors import RatingsFileError

_PARQUET_SUFFIXES = (".parquet", ".pq")
_WHITESPACE = r"\s+"
# Stand-in for a multi-character separator such as "::": the C parser only splits on one
# character, and the ASCII unit separator does not occur in ratings files.
_UNIT_SEP = "\x1f"
_ROLES = ("user", "item", "rating", "timestamp")
# Header names recognised for each role (compared lower-cased).
_ROLE_NAMES = {
    "user": ("userid", "user_id", "user", "users", "uid", "reviewerid"),
    "item": ("movieid", "movie_id", "movie", "itemid", "item_id", "item", "items", "iid", "asin"),
    "rating": ("rating", "ratings", "score", "stars", "value"),
    "timestamp": ("timestamp", "time", "ts", "unixtime", "unix_time", "unixreviewtime"),
}


class _TextFormat:
    def __init__(self, sep: str, encoding: str, ncol: int) -> None:
        self.sep = sep
        self.encoding = encoding
        self.ncol = ncol

    def split(self, line: str) -> list[str]:
        if self.sep == _WHITESPACE:
            return line.split()
        if len(self.sep) == 1:
            return next(csv.reader([line], delimiter=self.sep))
        return line.split(self.sep)


def _text_encoding(encoding: str) -> str:
    # utf-8-sig decodes plain UTF-8 too and drops a leading byte-order mark.
    return "utf-8-sig" if encoding.lower().replace("_", "-") in ("utf-8", "utf8") else encoding


def _detect_sep(line: str) -> str:
    """The first of tab, ``::``, comma, semicolon, ``|`` that splits ``line`` into >= 3
    fields; else runs of whitespace."""
    for sep in ("\t", "::", ",", ";", "|"):
        if len(line.split(sep)) >= 3:
            return sep
    if len(line.split()) >= 3:
        return _WHITESPACE
    return next((sep for sep in ("\t", "::", ",", ";", "|") if sep in line), _WHITESPACE)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _role_of(name: str) -> str | None:
    key = name.strip().strip("\"'").lower()
    for role, names in _ROLE_NAMES.items():
        if key in names:
            return role
    return None


def _sep_name(sep: str) -> str:
    return {"\t": "tabs", _WHITESPACE: "whitespace"}.get(sep, repr(sep))


def _column_positions(
    path: Path, line_no: int | None, names: Any, ncol: int, columns: Sequence | None
) -> dict[str, int]:
    """0-based field position of each role present in the file."""
    if columns is not None:
        positions = {}
        for role, col in zip(_ROLES, columns, strict=False):
            if isinstance(col, str):
                if names is None:
                    raise RatingsFileError(
                        f"{path}: columns={columns!r} names columns but the file has no header line",
                        path=path,
                    )
                matches = [k for k, n in enumerate(names) if n == col]
                if not matches:
                    raise RatingsFileError(
                        f"{path}, line {line_no}: no column named {col!r} in the header {names}",
                        path=path,
                        line=line_no,
                        value=col,
                    )
                positions[role] = matches[0]
            else:
                positions[role] = int(col)
                if not 0 <= positions[role]:
                    raise ValueError(f"column positions must be >= 0, got {columns!r}")
        return positions
    if names is not None:
        found: dict[str, int] = {}
        for k, name in enumerate(names):
            named = _role_of(name)
            if named is not None and named not in found:
                found[named] = k
        if all(r in found for r in ("user", "item", "rating")):
            return found
    positions = {"user": 0, "item": 1, "rating": 2}
    if ncol >= 4:
        positions["timestamp"] = 3
    return positions
