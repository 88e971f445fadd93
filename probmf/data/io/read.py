"""The readers: `read_ratings` (a ratings file, parsed and then checked, into `Ratings`), and the
command line's small CSVs (`read_pairs`, `read_new_user`) into arrays."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from probmf.data.io.checks import _MAX_RATING, _check_options, _py, _scale, _to_ratings
from probmf.data.io.errors import RatingsFileError
from probmf.data.io.parse import _locate_bad_line, _read_parquet, _read_text
from probmf.data.io.sniff import _PARQUET_SUFFIXES, _role_of, _sep_name, _TextFormat
from probmf.data.ratings import Ratings


def read_ratings(
    path: str | os.PathLike[str],
    *,
    sep: str | None = None,
    header: Any = "infer",
    columns: Sequence | None = None,
    rating_scale: tuple[float, float] | None = None,
    duplicates: str = "error",
    encoding: str = "utf-8",
    id_type: str = "auto",
) -> Ratings:
    """Read a ratings file: one ``user, item, rating[, timestamp]`` per line, or Parquet.

    Reads MovieLens ``ratings.csv`` (header ``userId,movieId,rating,timestamp``), ``u.data``
    (tab, no header), ``ratings.dat`` (``UserID::MovieID::Rating::Timestamp``) and any other
    delimited file; ``.parquet`` / ``.pq`` by extension; ``.gz``, ``.bz2`` and ``.xz`` are
    decompressed. A UTF-8 byte-order mark is skipped and blank lines are ignored.

    With ``id_type="auto"``, a user or item column whose first value is a number holds
    integer ids, which must be non-negative integers; otherwise its ids are kept as strings.
    The ratings' id maps are the distinct ids of the file.

    Args:
      path: the file.
      sep: field separator (any string; ``r"\\s+"`` for runs of whitespace). None detects tab,
        ``::``, comma, semicolon, ``|`` or whitespace from the first non-empty line.
      header: "infer" (a first line whose rating field is not a number and which names a known
        column, e.g. ``rating``, is a header), True or False.
      columns: where to find user, item, rating[, timestamp]: 3 or 4 header names, or 0-based
        field positions. None: known header names (``userId``, ``movieId``, ``rating``,
        ``timestamp`` and common variants), else the first 3 or 4 fields in that order.
      rating_scale: (low, high); a rating outside it is an error.
      duplicates: a repeated (user, item) pair is an "error" (default), or keeps the "last"
        rating, or their "mean" (with the last one's timestamp).
      encoding: text encoding (an ASCII superset such as utf-8 or latin-1).
      id_type: "auto", "int" (every id must be a non-negative integer) or "str" (ids are kept
        as the text in the file, e.g. with leading zeros).

    Returns:
      `Ratings` with ``source`` set to ``str(path)``; timestamps (int64 seconds) when the file
      has a timestamp column.

    Raises:
      RatingsFileError: a malformed line, missing field, non-numeric / NaN / inf rating, a
        rating above 1e9 in magnitude or outside ``rating_scale``, a negative, non-integer or
        too large (> 2**62) numeric id, a duplicate pair, a line of numbers read as the header
        (``header=True``), or no ratings at all.
    """
    path = Path(os.fspath(path))
    _check_options(duplicates, id_type, rating_scale)
    if not (header == "infer" or header is None or isinstance(header, bool)):
        raise ValueError(f"header must be 'infer', True or False, got {header!r}")
    rating_scale = _scale(rating_scale)
    if columns is not None:
        columns = list(columns)
        if len(columns) not in (3, 4):
            raise ValueError(f"columns must name user, item, rating[, timestamp], got {columns!r}")
    if not path.is_file():
        raise FileNotFoundError(f"ratings file not found: {path}")

    if path.suffix.lower() in _PARQUET_SUFFIXES:
        src = _read_parquet(path, columns)
    else:
        src = _read_text(path, sep=sep, header=header, columns=columns, encoding=encoding, id_type=id_type)
    return _to_ratings(src, rating_scale=rating_scale, duplicates=duplicates, id_type=id_type)


def read_pairs(path: str | os.PathLike[str], *, times: bool = False) -> tuple:
    """(users, items) raw ids from a CSV with a header naming the user and item columns
    (``userId,movieId[,...]``; other columns are ignored). Every pair is kept, repeats too;
    an empty id is a `RatingsFileError` naming the line. ``times``: also return the pairs'
    ``timestamp`` column (float64 seconds, (n,)), or None when the file has none; a value
    that is not a finite number is a `RatingsFileError` naming the line."""
    path = Path(os.fspath(path))
    df = _read_small_csv(path, ("user", "item"), optional=("timestamp",) if times else ())
    if not times:
        return df["user"].to_numpy(), df["item"].to_numpy()
    if "timestamp" not in df:
        return df["user"].to_numpy(), df["item"].to_numpy(), None
    stamps = pd.to_numeric(df["timestamp"], errors="coerce").to_numpy(np.float64)
    bad = ~np.isfinite(stamps)
    if bad.any():
        k = int(np.argmax(bad))
        value, line = df["timestamp"].iloc[k], int(df.index[k])
        raise RatingsFileError(f"{path}, line {line}: timestamp {value!r} is not a finite number", path=path,
                               line=line, value=value)  # fmt: skip
    return df["user"].to_numpy(), df["item"].to_numpy(), stamps


def read_new_user(path: str | os.PathLike[str]) -> tuple[np.ndarray, np.ndarray]:
    """(items, ratings) of one new user from a CSV with header ``movieId,rating``.

    Each item may appear once, and each rating must be a finite number of magnitude at most
    1e9; otherwise a `RatingsFileError` names the line and the value."""
    path = Path(os.fspath(path))
    df = _read_small_csv(path, ("item", "rating"))
    ratings = pd.to_numeric(df["rating"].str.strip(), errors="coerce").to_numpy(np.float64)
    with np.errstate(invalid="ignore"):
        bad = ~(np.abs(ratings) <= _MAX_RATING)
    if bad.any():
        k = int(np.argmax(bad))
        value, line = df["rating"].iloc[k], int(df.index[k])
        what = "is too large in magnitude (|rating| <= 1e9)" if np.isfinite(ratings[k]) else "is not a finite number"
        raise RatingsFileError(f"{path}, line {line}: rating {value!r} {what}", path=path, line=line, value=value)
    items = df["item"].to_numpy()
    repeat = pd.Series(items).duplicated().to_numpy()
    if repeat.any():
        k = int(np.argmax(repeat))
        item = _py(items[k])
        first = int(df.index[int(np.argmax(items == items[k]))])
        line = int(df.index[k])
        raise RatingsFileError(
            f"{path}, line {line}: item {item!r} is rated twice (also on line {first}); a user rates an item once",
            path=path,
            line=line,
            value=item,
        )
    return items, ratings


def _read_small_csv(
    path: str | os.PathLike[str], roles: tuple[str, ...], *, optional: tuple[str, ...] = ()
) -> pd.DataFrame:
    """A small headed CSV (comma, tab, semicolon or ``|``) with the columns of ``roles`` (and of
    ``optional`` where the header has them),
    renamed to the role names and indexed by file line number; ids are parsed as integers
    when every value is one."""
    path = Path(os.fspath(path))
    if not path.is_file():
        raise FileNotFoundError(f"file not found: {path}")
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise _locate_bad_line(path, _TextFormat(",", "utf-8", 0), 1, err) from None
    lines = text.splitlines()
    first = next((k for k, line in enumerate(lines) if line.strip()), None)
    if first is None:
        raise RatingsFileError(f"{path}: no rows (the file is empty)", path=path)
    head = lines[first]
    sep = next((c for c in (",", "\t", ";", "|") if c in head), ",")
    fmt = _TextFormat(sep, "utf-8", 0)
    names = [name.strip() for name in fmt.split(head)]
    found: dict[str | None, int] = {}
    for k, name in enumerate(names):
        found.setdefault(_role_of(name), k)
    missing = [r for r in roles if r not in found]
    if missing:
        raise RatingsFileError(
            f"{path}, line {first + 1}: header {names} has no {' or '.join(missing)} column "
            f"(e.g. userId, movieId, rating)",
            path=path,
            line=first + 1,
            value=head,
        )
    roles = (*roles, *(r for r in optional if r in found))  # the optional columns the header has
    rows, numbers = [], []
    for number, line in enumerate(lines[first + 1 :], start=first + 2):
        if not line.strip():
            continue
        fields = fmt.split(line)
        if len(fields) != len(names):
            raise RatingsFileError(
                f"{path}, line {number}: expected {len(names)} fields separated by {_sep_name(sep)}, "
                f"found {len(fields)}: {line!r}",
                path=path,
                line=number,
                value=line,
            )
        for role in roles:
            if not fields[found[role]].strip():
                raise RatingsFileError(
                    f"{path}, line {number}: no {names[found[role]]} value: {line!r}", path=path, line=number, value=""
                )
        rows.append([fields[found[role]].strip() for role in roles])
        numbers.append(number)
    if not rows:
        raise RatingsFileError(f"{path}: no rows", path=path)
    out = pd.DataFrame(rows, columns=list(roles), index=numbers, dtype=object)
    for role in ("user", "item"):
        # Up to 18 digits: always within int64.
        if role in out and out[role].str.fullmatch(r"\d{1,18}").all():
            out[role] = out[role].astype(np.int64)
        elif role in out:
            out[role] = out[role].to_numpy(dtype=str)
    return out
