"""Text and Parquet into a table whose rows know their file line (`_Source`).

The first non-empty line of text fixes the separator, the header and the columns
(`probmf.data.io.sniff`); the rest is read with the pandas C parser (a multi-character
separator swapped for one character on the fly), and when the parser refuses a line the file
is read again to quote it. The values are checked later (`probmf.data.io.checks`).
"""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from probmf.data.io.errors import RatingsFileError
from probmf.data.io.sniff import (
    _ROLES,
    _UNIT_SEP,
    _WHITESPACE,
    _column_positions,
    _detect_sep,
    _is_number,
    _role_of,
    _sep_name,
    _text_encoding,
    _TextFormat,
)


class _Source:
    """A parsed table and how to point at its rows in the file."""

    def __init__(self, path: Path, df: pd.DataFrame, roles: dict[str, str], first_line: int, unit: str) -> None:
        self.path = path
        self.df = df  # one column per role; df.index = 0-based row position in the file's data
        self.roles = roles  # role -> column label of df
        self.first_line = first_line  # file line (or row) number of data row 0
        self.unit = unit  # "line" or "row"
        self.text: _TextFormat | None = None
        self.first_line_hint = ""  # added to a complaint about data row 0
        self.name_columns = False  # a DataFrame: complaints name the column too

    def line_of(self, pos: int) -> int:
        """File line number of the ``pos``-th remaining row."""
        return self.first_line + int(self.df.index[pos])

    def error(self, pos: int | None, what: str, value: Any = None, column: str | None = None) -> RatingsFileError:
        if pos is None:
            return RatingsFileError(f"{self.path}: {what}", path=self.path, value=value)
        line = self.line_of(pos)
        if self.first_line_hint and int(self.df.index[pos]) == 0:
            what = f"{what} ({self.first_line_hint})"
        where = f"{self.unit} {line}" + (f", column {column!r}" if self.name_columns and column is not None else "")
        return RatingsFileError(f"{self.path}, {where}: {what}", path=self.path, line=line, value=value)


def _open_binary(path: Path) -> gzip.GzipFile | bz2.BZ2File | lzma.LZMAFile | io.BufferedReader:
    suffix = path.suffix.lower()
    if suffix == ".gz":
        return gzip.open(path, "rb")
    if suffix == ".bz2":
        return bz2.open(path, "rb")
    if suffix == ".xz":
        return lzma.open(path, "rb")
    return open(path, "rb")


def _iter_lines(path: Path, encoding: str) -> Iterator[tuple[int, str]]:
    """(1-based line number, line without its end) for each line of the file."""
    with _open_binary(path) as raw:
        text = io.TextIOWrapper(raw, encoding=encoding, errors="replace", newline=None)
        for number, line in enumerate(text, start=1):
            yield number, line.rstrip("\n")


def _file_line(path: Path, encoding: str, wanted: int) -> str:
    for number, line in _iter_lines(path, encoding):
        if number == wanted:
            return line
    return ""


def _read_text(
    path: Path, *, sep: str | None, header: Any, columns: Sequence | None, encoding: str, id_type: str
) -> _Source:
    encoding = _text_encoding(encoding)
    first = None
    for number, line in _iter_lines(path, encoding):
        if line.strip():
            first = (number, line)
            break
    if first is None:
        raise RatingsFileError(f"{path}: no ratings (the file is empty)", path=path)
    first_no, first_line = first
    if sep is None:
        sep = _detect_sep(first_line)
    elif sep == " " or (len(sep) > 1 and sep.isspace()):
        sep = _WHITESPACE
    fmt = _TextFormat(sep, encoding, ncol=0)
    fields = fmt.split(first_line)
    fmt.ncol = ncol = len(fields)

    rating_pos = columns[2] if columns is not None and isinstance(columns[2], (int, np.integer)) else 2
    by_name = columns is not None and all(isinstance(c, str) for c in columns)
    if header == "infer":
        looks_like_data = rating_pos < ncol and _is_number(fields[rating_pos].strip())
        header = by_name or (not looks_like_data and any(_role_of(f) for f in fields))
    elif header is True and not by_name and all(_is_number(f.strip().strip("\"'")) for f in fields):
        # Skipping it would silently drop a rating.
        raise RatingsFileError(
            f"{path}, line {first_no}: header=True, but this line holds only numbers, so it is a rating rather "
            f"than column names: {first_line!r}; pass header=False or 'infer'",
            path=path,
            line=first_no,
            value=first_line,
        )
    header = bool(header)

    names = [f.strip().strip("\"'") for f in fields] if header else None
    positions = _column_positions(path, first_no, names, ncol, columns)
    need = max(3, max(positions.values()) + 1)
    if ncol < need:
        raise RatingsFileError(
            f"{path}, line {first_no}: expected at least {need} fields (user, item, rating) separated by "
            f"{_sep_name(sep)}, found {ncol}: {first_line!r}",
            path=path,
            line=first_no,
            value=first_line,
        )
    data_line = first_no + 1 if header else first_no
    labels = [f"f{k}" for k in range(ncol)]
    # String ids are read as text so that e.g. "007" stays "007".
    text_cols = [labels[positions[r]] for r in ("user", "item")] if id_type == "str" else []
    df = _parse(path, fmt, skip=data_line - 1, labels=labels, first_line=data_line, text_cols=text_cols)

    # Blank lines come through as all-missing rows (skip_blank_lines=False keeps row k on line
    # data_line + k); drop them now that the numbering is fixed.
    rest_missing = df[labels[1:]].isna().all(axis=1).to_numpy()
    if rest_missing.any():
        lead = df[labels[0]]
        blank = rest_missing & lead.isna().to_numpy()
        spaces = np.flatnonzero(rest_missing & ~blank)  # a line of spaces: only field 0 is set
        if spaces.size and not pd.api.types.is_numeric_dtype(lead.dtype):
            blank[spaces] = lead.iloc[spaces].astype(str).str.strip().eq("").to_numpy()
        if blank.any():
            df = df.loc[~blank]
    roles = {role: labels[pos] for role, pos in positions.items()}
    src = _Source(path, df[list(roles.values())], roles, data_line, "line")
    src.text = fmt
    if not header:
        src.first_line_hint = "if this line is a header, pass header=True"
    return src


class _ReplacingReader(io.RawIOBase):
    """Binary stream that replaces a multi-byte separator by `_UNIT_SEP` on the fly."""

    def __init__(self, raw: io.BufferedIOBase, sep: bytes, chunk_size: int = 1 << 20) -> None:
        self._raw = raw
        self._chunk_size = chunk_size
        self._sep = sep
        self._out = b""
        self._held = b""
        self._eof = False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while not self._out and not self._eof:
            chunk = self._raw.read(self._chunk_size)
            out = (self._held + chunk).replace(self._sep, _UNIT_SEP.encode())
            self._held = b""
            if not chunk:
                self._eof = True
            else:
                # Hold back a tail that may be the start of a separator split across chunks;
                # it is still raw text, so it is replaced together with the next chunk.
                for k in range(len(self._sep) - 1, 0, -1):
                    if out.endswith(self._sep[:k]):
                        out, self._held = out[:-k], out[-k:]
                        break
            self._out = out
        n = min(len(buffer), len(self._out))
        buffer[:n] = self._out[:n]
        self._out = self._out[n:]
        return n


def _parse(
    path: Path, fmt: _TextFormat, *, skip: int, labels: list[str], first_line: int, text_cols: list[str]
) -> pd.DataFrame:
    kwargs = dict(
        header=None,
        names=labels,
        index_col=False,
        skiprows=skip,
        skip_blank_lines=False,
        # Only an empty field is missing: "NA", "null", "nan" are values (string ids, or a
        # rating reported as not a number).
        keep_default_na=False,
        na_values=[""],
        encoding=fmt.encoding,
        engine="c",
        dtype=dict.fromkeys(text_cols, str) or None,
    )
    multi = len(fmt.sep) > 1 and fmt.sep != _WHITESPACE
    try:
        with warnings.catch_warnings():
            # Mixed types across the parser's chunks are resolved by the checks below.
            warnings.simplefilter("ignore", pd.errors.DtypeWarning)
            # A quoted field that runs over a line end merges lines and drops fields: refuse it.
            warnings.simplefilter("error", pd.errors.ParserWarning)
            if multi:
                with _open_binary(path) as raw:
                    stream = io.BufferedReader(
                        _ReplacingReader(raw, fmt.sep.encode("utf-8" if fmt.encoding == "utf-8-sig" else fmt.encoding)),
                        1 << 20,
                    )
                    return pd.read_csv(stream, sep=_UNIT_SEP, **kwargs)
            return pd.read_csv(path, sep=fmt.sep, compression="infer", **kwargs)
    except pd.errors.EmptyDataError:
        return pd.DataFrame({label: pd.Series([], dtype="float64") for label in labels})
    except (pd.errors.ParserError, pd.errors.ParserWarning, UnicodeDecodeError) as err:
        raise _locate_bad_line(path, fmt, first_line, err) from err


def _locate_bad_line(path: Path, fmt: _TextFormat, first_line: int, err: Exception) -> RatingsFileError:
    """Find the first line the parser refused (wrong field count or undecodable text)."""
    if isinstance(err, UnicodeDecodeError):
        with _open_binary(path) as raw:
            for number, raw_line in enumerate(raw, start=1):
                try:
                    raw_line.decode(fmt.encoding)
                except UnicodeDecodeError:
                    value = raw_line.rstrip(b"\r\n")
                    encoding = fmt.encoding.removesuffix("-sig")
                    return RatingsFileError(
                        f"{path}, line {number}: not valid {encoding} text: {value!r}",
                        path=path,
                        line=number,
                        value=value,
                    )
    for number, line in _iter_lines(path, fmt.encoding):
        if number < first_line or not line.strip():
            continue
        found = len(fmt.split(line))
        if found != fmt.ncol:
            return RatingsFileError(
                f"{path}, line {number}: expected {fmt.ncol} fields separated by {_sep_name(fmt.sep)}, "
                f"found {found}: {line!r}",
                path=path,
                line=number,
                value=line,
            )
    return RatingsFileError(f"{path}: cannot parse: {err}", path=path)


def _read_parquet(path: Path, columns: Sequence | None) -> _Source:
    try:
        df = pd.read_parquet(path)
    except Exception as err:  # pyarrow raises several types for a damaged file
        raise RatingsFileError(f"{path}: cannot read as Parquet: {err}", path=path) from err
    names = [str(c) for c in df.columns]
    if columns is not None:
        positions = {}
        for role, col in zip(_ROLES, columns, strict=False):
            if isinstance(col, str):
                if col not in names:
                    raise RatingsFileError(f"{path}: no column named {col!r} in {names}", path=path, value=col)
                positions[role] = names.index(col)
            else:
                positions[role] = int(col)
    else:
        positions = _column_positions(path, None, names, len(names), None)
    if len(names) < 3 or max(positions.values()) >= len(names):
        raise RatingsFileError(f"{path}: expected user, item and rating columns, found {names}", path=path, value=names)
    df = df.reset_index(drop=True)
    roles = {role: df.columns[pos] for role, pos in positions.items()}
    return _Source(path, df[list(roles.values())], roles, 1, "row")
