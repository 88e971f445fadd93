"""Read and write ratings files: delimited text (CSV, tab, ``::``, ...) and Parquet.

`read_ratings` turns one rating per line (``user item rating [timestamp]``) into a `Ratings`.
It reads with the pandas C parser and checks every value vectorised, so a 20M-line file loads
in seconds; only when a check fails does it go back to the file to quote the offending line.
Every problem is a `RatingsFileError` naming the file, the 1-based line (the row, for Parquet)
and the offending value.
"""

from __future__ import annotations

import bz2
import csv
import dataclasses
import gzip
import io
import lzma
import os
import secrets
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from probmf.data.ratings import IdMap, Ratings

__all__ = [
    "RatingsFileError",
    "dataframe_columns",
    "read_dataframe",
    "read_new_user",
    "read_pairs",
    "read_ratings",
    "to_ratings",
    "write_ratings",
]

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
_MAX_ID = 2**62  # ids stay exact in float64 parsing and in int64 arithmetic
_TOO_LARGE = "{name} {{value}} is too large (ids are integers in [0, 2**62])"
# Largest |rating|: squares summed over a billion ratings stay far below float32's maximum
# (3.4e38), so no fitter's sums of squares or Gram matrices can overflow.
_MAX_RATING = 1e9
_HUGE_RATING = "rating {value} is too large in magnitude (|rating| <= 1e9; rescale the ratings)"


class RatingsFileError(ValueError):
    """A ratings file that cannot be read as ratings.

    Attributes:
      path: the file, as a string.
      line: 1-based line number (row number for Parquet), or None for a whole-file problem.
      value: the offending value (a string as it appears in the file), or None.
    """

    def __init__(self, message: str, *, path, line: int | None = None, value=None):
        super().__init__(message)
        self.path = str(path)
        self.line = line
        self.value = value


# ---- reading -----------------------------------------------------------------------------


def read_ratings(
    path,
    *,
    sep: str | None = None,
    header="infer",
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


def read_dataframe(
    df,
    *,
    columns: Sequence | None = None,
    rating_scale: tuple[float, float] | None = None,
    duplicates: str = "error",
    id_type: str = "auto",
    name: str = "DataFrame",
) -> Ratings:
    """A pandas DataFrame with one rating per row (raw ids) as `Ratings`, checked exactly as
    `read_ratings` checks a file; errors name the column and the row (0-based position,
    ``df.iloc``).

    ``columns``: user, item, rating[, timestamp] column names; None finds them by name
    (``user``/``userId``/``user_id``, ``item``/``movieId``/``item_id``, ``rating``, ``timestamp``
    and the variants `read_ratings` knows), and two columns answering to one role are an
    error. The other arguments are `read_ratings`'.
    """
    roles = dataframe_columns(df, columns, name=name, need=("user", "item", "rating"))
    _check_options(duplicates, id_type, rating_scale)
    src = _Source(Path(name), df[list(roles.values())].reset_index(drop=True), roles, 0, "row")
    src.name_columns = True
    ratings = _to_ratings(src, rating_scale=_scale(rating_scale), duplicates=duplicates, id_type=id_type)
    return dataclasses.replace(ratings, source=name)


def to_ratings(data, *, columns=None, rating_scale=None, duplicates: str = "error") -> Ratings:
    """``data`` as `Ratings`: a `Ratings` as it is, a DataFrame checked by `read_dataframe`."""
    if isinstance(data, Ratings):
        return data
    return read_dataframe(data, columns=columns, rating_scale=rating_scale, duplicates=duplicates)


def dataframe_columns(df, columns=None, *, name: str = "DataFrame", need=("user", "item", "rating")) -> dict:
    """role -> column label of ``df`` for the roles in ``need`` (and timestamp when present):
    ``columns`` in role order, else found by name (`read_dataframe`)."""
    if not hasattr(df, "columns") or not hasattr(df, "iloc"):
        raise TypeError(f"expected a pandas DataFrame, got {type(df).__name__}")
    labels = list(df.columns)
    if columns is not None:
        columns = list(columns)
        if not len(need) <= len(columns) <= len(need) + 1:
            raise ValueError(f"columns must name {', '.join(need)}[, timestamp], got {columns!r}")
        for col in columns:
            if col not in labels:
                raise ValueError(f"{name}: no column named {col!r}; it has {labels}")
        return dict(zip((*need, "timestamp"), columns, strict=False))
    found: dict[str, list] = {}
    for label in labels:
        role = _role_of(str(label))
        if role is not None:
            found.setdefault(role, []).append(label)
    for role, cols in found.items():
        if len(cols) > 1 and (role in need or role == "timestamp"):
            raise ValueError(f"{name}: columns {cols} all look like the {role} column; pass columns= to choose")
    missing = [role for role in need if role not in found]
    if missing:
        raise ValueError(
            f"{name}: no {' or '.join(missing)} column among {labels} "
            f"(e.g. {', '.join(repr(_ROLE_NAMES[r][0]) for r in missing)}); pass columns= to name them"
        )
    return {role: found[role][0] for role in (*need, "timestamp") if role in found}


def _check_options(duplicates: str, id_type: str, rating_scale) -> None:
    if id_type not in ("auto", "int", "str"):
        raise ValueError(f"id_type must be 'auto', 'int' or 'str', got {id_type!r}")
    if duplicates not in ("error", "last", "mean"):
        raise ValueError(f"duplicates must be 'error', 'last' or 'mean', got {duplicates!r}")
    _scale(rating_scale)


def _scale(rating_scale) -> tuple[float, float] | None:
    if rating_scale is None:
        return None
    low, high = (float(v) for v in rating_scale)
    if not low <= high:
        raise ValueError(f"rating_scale must be (low, high) with low <= high, got {rating_scale!r}")
    return low, high


class _Source:
    """A parsed table and how to point at its rows in the file."""

    def __init__(self, path: Path, df: pd.DataFrame, roles: dict[str, str], first_line: int, unit: str):
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

    def error(self, pos: int | None, what: str, value=None, column=None) -> RatingsFileError:
        if pos is None:
            return RatingsFileError(f"{self.path}: {what}", path=self.path, value=value)
        line = self.line_of(pos)
        if self.first_line_hint and int(self.df.index[pos]) == 0:
            what = f"{what} ({self.first_line_hint})"
        where = f"{self.unit} {line}" + (f", column {column!r}" if self.name_columns and column is not None else "")
        return RatingsFileError(f"{self.path}, {where}: {what}", path=self.path, line=line, value=value)


class _TextFormat:
    def __init__(self, sep: str, encoding: str, ncol: int):
        self.sep = sep
        self.encoding = encoding
        self.ncol = ncol

    def split(self, line: str) -> list[str]:
        if self.sep == _WHITESPACE:
            return line.split()
        if len(self.sep) == 1:
            return next(csv.reader([line], delimiter=self.sep))
        return line.split(self.sep)


def _open_binary(path: Path):
    suffix = path.suffix.lower()
    if suffix == ".gz":
        return gzip.open(path, "rb")
    if suffix == ".bz2":
        return bz2.open(path, "rb")
    if suffix == ".xz":
        return lzma.open(path, "rb")
    return open(path, "rb")


def _text_encoding(encoding: str) -> str:
    # utf-8-sig decodes plain UTF-8 too and drops a leading byte-order mark.
    return "utf-8-sig" if encoding.lower().replace("_", "-") in ("utf-8", "utf8") else encoding


def _iter_lines(path: Path, encoding: str):
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


def _read_text(path: Path, *, sep, header, columns, encoding, id_type) -> _Source:
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


def _sep_name(sep: str) -> str:
    return {"\t": "tabs", _WHITESPACE: "whitespace"}.get(sep, repr(sep))


def _column_positions(path, line_no, names, ncol, columns) -> dict[str, int]:
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
        found = {}
        for k, name in enumerate(names):
            role = _role_of(name)
            if role is not None and role not in found:
                found[role] = k
        if all(r in found for r in ("user", "item", "rating")):
            return found
    positions = {"user": 0, "item": 1, "rating": 2}
    if ncol >= 4:
        positions["timestamp"] = 3
    return positions


class _ReplacingReader(io.RawIOBase):
    """Binary stream that replaces a multi-byte separator by `_UNIT_SEP` on the fly."""

    def __init__(self, raw, sep: bytes, chunk_size: int = 1 << 20):
        self._raw = raw
        self._chunk_size = chunk_size
        self._sep = sep
        self._out = b""
        self._held = b""
        self._eof = False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
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
            for number, line in enumerate(raw, start=1):
                try:
                    line.decode(fmt.encoding)
                except UnicodeDecodeError:
                    value = line.rstrip(b"\r\n")
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


def _read_parquet(path: Path, columns) -> _Source:
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


# ---- checks and conversion ---------------------------------------------------------------


class _Problems:
    """Collects the first bad row of each check; the earliest one in the file is raised."""

    def __init__(self, src: _Source):
        self.src = src
        self.first: tuple[int, str, object] | None = None

    def add(self, mask, what, role: str | None = None) -> None:
        """``what(pos)`` -> (message, value) for the first True row of ``mask`` (of the
        column of ``role``, which `_about` also tells)."""
        mask = np.asarray(mask, dtype=bool)
        if not mask.any():
            return
        pos = int(np.argmax(mask))
        if self.first is None or pos < self.first[0]:
            column = self.src.roles.get(role) if role else getattr(what, "column", None)
            self.first = (pos, *what(pos), column)

    def raise_first(self) -> None:
        if self.first is not None:
            pos, message, value, column = self.first
            raise self.src.error(pos, message, value, column)


def _py(value):
    return value.item() if isinstance(value, np.generic) else value


def _raw_value(col: pd.Series, pos: int):
    return _py(col.iloc[pos])


def _about(col: pd.Series, template: str):
    """``what(pos)`` for `_Problems.add`: ``template`` with ``{value}`` set to the row's value."""

    def what(pos):
        value = _raw_value(col, pos)
        return template.format(value=repr(value)), value

    what.column = col.name
    return what


def _missing(src: _Source, role: str, pos: int):
    """Message for an empty field: a short line, or a field left empty."""
    if src.text is not None:
        line = _file_line(src.path, src.text.encoding, src.line_of(pos))
        found = len(src.text.split(line))
        if found != src.text.ncol:
            return (
                f"expected {src.text.ncol} fields separated by {_sep_name(src.text.sep)}, found {found}: {line!r}",
                line,
            )
        return f"empty {role} field: {line!r}", ""
    return f"missing {role} (NaN or None)", None


def _check_ids(src: _Source, role: str, problems: _Problems, id_type: str) -> np.ndarray:
    """int64 ids, or a str array of ids (placeholders where a problem was recorded)."""
    col = src.df[src.roles[role]]
    name = f"{role} id"
    missing = col.isna().to_numpy()
    problems.add(missing, lambda p: _missing(src, role, p), role)
    if id_type == "str":
        return col.astype(str).str.strip().to_numpy(dtype=str)
    if pd.api.types.is_bool_dtype(col.dtype):
        problems.add(np.ones(len(col), bool), _about(col, f"{name} {{value}} is not an integer"))
        return np.zeros(len(col), np.int64)
    if pd.api.types.is_unsigned_integer_dtype(col.dtype):
        # pandas reads a column with a value >= 2**63 as uint64: never an id to keep.
        big = col.to_numpy(np.uint64) > _MAX_ID
        problems.add(big, _about(col, _TOO_LARGE.format(name=name)))
        return np.where(big, 0, col.to_numpy(np.uint64)).astype(np.int64)
    if pd.api.types.is_integer_dtype(col.dtype):
        ids = col.to_numpy(np.int64)
        problems.add(ids < 0, _about(col, f"{name} {{value}} is negative"))
        problems.add(ids > _MAX_ID, _about(col, _TOO_LARGE.format(name=name)))
        return ids
    if pd.api.types.is_float_dtype(col.dtype):
        return _numeric_ids(col.to_numpy(np.float64), col, missing, name, problems)
    # A text column holds integer ids with some bad values, or string ids: with "auto" the
    # first value decides.
    present = col[~missing]
    if id_type == "int" or (len(present) and _is_number(str(present.iloc[0]).strip())):
        num = pd.to_numeric(col, errors="coerce").to_numpy(np.float64)
        bad = np.isnan(num) & ~missing
        problems.add(bad, _about(col, f"{name} {{value}} is not an integer"))
        return _numeric_ids(num, col, missing | bad, name, problems)
    return col.astype(str).str.strip().to_numpy(dtype=str)


def _numeric_ids(num: np.ndarray, col: pd.Series, skip: np.ndarray, name: str, problems: _Problems):
    ok = ~skip
    with np.errstate(invalid="ignore"):
        nonint = ok & ((num != np.floor(num)) | ~np.isfinite(num))
        negative = ok & ~nonint & (num < 0)
        too_large = ok & ~nonint & (num > _MAX_ID)
    problems.add(nonint, _about(col, f"{name} {{value}} is not an integer"))
    problems.add(negative, _about(col, f"{name} {{value}} is negative"))
    problems.add(too_large, _about(col, _TOO_LARGE.format(name=name)))
    return np.where(ok & ~nonint & ~negative & ~too_large, num, 0).astype(np.int64)


def _check_ratings(src: _Source, scale, problems: _Problems) -> np.ndarray:
    col = src.df[src.roles["rating"]]
    missing = col.isna().to_numpy()
    problems.add(missing, lambda p: _missing(src, "rating", p), "rating")
    if pd.api.types.is_bool_dtype(col.dtype):
        # The C parser turns a column of True/False into booleans; they are not ratings.
        problems.add(~missing, _about(col, "rating {value} is not a number"))
        return np.zeros(len(col), np.float64)
    if pd.api.types.is_numeric_dtype(col.dtype):
        values = col.to_numpy(np.float64)
    else:
        values = pd.to_numeric(col, errors="coerce").to_numpy(np.float64)
        nonnum = np.isnan(values) & ~missing
        # A literal "nan" coerces to NaN too; it is reported below as not finite.
        literal = nonnum.copy()
        if nonnum.any():
            idx = np.flatnonzero(nonnum)
            literal[idx] = [_is_number(str(v).strip()) for v in col.iloc[idx]]
        problems.add(nonnum & ~literal, _about(col, "rating {value} is not a number"))
        missing = missing | (nonnum & ~literal)
    nonfinite = ~missing & ~np.isfinite(values)
    problems.add(nonfinite, _about(col, "rating {value} is not finite"))
    with np.errstate(invalid="ignore"):
        huge = ~missing & ~nonfinite & (np.abs(values) > _MAX_RATING)
    problems.add(huge, _about(col, _HUGE_RATING))
    if scale is not None:
        low, high = scale
        with np.errstate(invalid="ignore"):
            outside = ~missing & ~nonfinite & ((values < low) | (values > high))
        problems.add(outside, _about(col, f"rating {{value}} is outside the scale [{low:g}, {high:g}]"))
    return values


def _check_timestamps(src: _Source, problems: _Problems) -> np.ndarray | None:
    if "timestamp" not in src.roles:
        return None
    col = src.df[src.roles["timestamp"]]
    missing = col.isna().to_numpy()
    problems.add(missing, lambda p: _missing(src, "timestamp", p), "timestamp")
    if pd.api.types.is_bool_dtype(col.dtype):
        problems.add(~missing, _about(col, "timestamp {value} is not an integer"))
        return np.zeros(len(col), np.int64)
    if pd.api.types.is_integer_dtype(col.dtype) and not pd.api.types.is_unsigned_integer_dtype(col.dtype):
        return col.to_numpy(np.int64)
    num = pd.to_numeric(col, errors="coerce").to_numpy(np.float64)
    with np.errstate(invalid="ignore"):
        bad = ~missing & ((num != np.floor(num)) | ~(np.abs(num) <= _MAX_ID))
    problems.add(bad, _about(col, "timestamp {value} is not an integer"))
    return np.where(missing | bad, 0, num).astype(np.int64)


def _to_ratings(src: _Source, *, rating_scale, duplicates: str, id_type: str) -> Ratings:
    if len(src.df) == 0:
        raise src.error(None, "no ratings (no data lines)")
    problems = _Problems(src)
    users = _check_ids(src, "user", problems, id_type)
    items = _check_ids(src, "item", problems, id_type)
    values = _check_ratings(src, rating_scale, problems)
    timestamps = _check_timestamps(src, problems)
    problems.raise_first()

    user_ids, u = IdMap.encode(users)
    item_ids, i = IdMap.encode(items)
    ratings = Ratings(u, i, values.astype(np.float32), user_ids, item_ids, timestamps, str(src.path))
    return _resolve_duplicates(ratings, values, src, duplicates)


def _resolve_duplicates(ratings: Ratings, values64: np.ndarray, src: _Source, policy: str) -> Ratings:
    key = ratings.users.astype(np.int64) * max(ratings.num_items, 1) + ratings.items
    ordered = np.sort(key)
    if not np.any(ordered[1:] == ordered[:-1]):
        return ratings
    order = np.argsort(key, kind="stable")  # within a pair, rows stay in file order
    sorted_key = key[order]
    starts = np.r_[True, sorted_key[1:] != sorted_key[:-1]]
    if policy == "error":
        repeat = np.flatnonzero(~starts)
        # The repeat that comes first in the file, and the occurrence just before it.
        k = repeat[np.argmin(order[repeat])]
        first, second = int(order[k - 1]), int(order[k])
        user = _py(ratings.user_ids.raw[ratings.users[second]])
        item = _py(ratings.item_ids.raw[ratings.items[second]])
        a, b = src.line_of(first), src.line_of(second)
        raise RatingsFileError(
            f"{src.path}, {src.unit} {b}: duplicate rating for user {user!r}, item {item!r} "
            f"(also on {src.unit} {a}); pass duplicates='last' or 'mean' to merge them",
            path=src.path,
            line=b,
            value=(user, item),
        )
    group_starts = np.flatnonzero(starts)
    ends = np.r_[group_starts[1:], len(order)] - 1
    keep = order[ends]  # last occurrence of each pair
    if policy == "mean":
        sums = np.add.reduceat(values64[order], group_starts)
        merged = sums / np.diff(np.r_[group_starts, len(order)])
    else:
        merged = values64[keep]
    back = np.argsort(keep)  # restore file order of the kept rows
    keep = keep[back]
    return dataclasses.replace(ratings.take(keep), values=merged[back].astype(np.float32))


# ---- writing -----------------------------------------------------------------------------


def write_ratings(ratings: Ratings, path, *, sep: str = ",", header: bool = True) -> None:
    """Write raw ids and ratings: Parquet for ``.parquet`` / ``.pq``, else delimited text.

    Columns ``userId, movieId, rating[, timestamp]``. The file is written under a temporary
    name in the same folder and renamed into place, so a failed write leaves any existing file
    untouched and never a partial one.

    Args:
      ratings: ratings whose ids are all known (no -1).
      path: destination file.
      sep: field separator for text (e.g. ",", "\\t", "::").
      header: write the column names as the first line (text only).
    """
    path = Path(os.fspath(path))
    df = ratings.to_dataframe()  # raises for unknown (-1) ids, whose raw ids are lost
    if path.suffix.lower() in _PARQUET_SUFFIXES:

        def write(f):
            df.to_parquet(f, index=False)

    else:

        def write(f):
            text = io.TextIOWrapper(f, encoding="utf-8", newline="")
            if len(sep) == 1:
                df.to_csv(text, sep=sep, header=header, index=False, lineterminator="\n")
            else:
                # pandas writes one-character separators only; swap in the real one per block.
                for start in range(0, max(len(df), 1), 1 << 20):
                    block = df.iloc[start : start + (1 << 20)].to_csv(
                        sep=_UNIT_SEP, header=header and start == 0, index=False, lineterminator="\n"
                    )
                    text.write(block.replace(_UNIT_SEP, sep))
            text.flush()
            text.detach()

    _atomic_write(path, write)


def _atomic_write(path: Path, write) -> None:
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    try:
        # "xb" creates a fresh file with the usual permissions (umask), unlike mkstemp's 0600.
        with open(tmp, "xb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


# ---- small files for the command line -----------------------------------------------------


def read_pairs(path) -> tuple[np.ndarray, np.ndarray]:
    """(users, items) raw ids from a CSV with a header naming the user and item columns
    (``userId,movieId[,...]``; other columns are ignored). Every pair is kept, repeats too;
    an empty id is a `RatingsFileError` naming the line."""
    df = _read_small_csv(path, ("user", "item"))
    return df["user"].to_numpy(), df["item"].to_numpy()


def read_new_user(path) -> tuple[np.ndarray, np.ndarray]:
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


def _read_small_csv(path, roles: tuple[str, ...]) -> pd.DataFrame:
    """A small headed CSV (comma, tab, semicolon or ``|``) with the columns of ``roles``,
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
    found = {}
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
