"""Side information as data: a table of user or item attributes as a sparse design matrix.

A feature file has a header and one row per raw id; every other column becomes one *group* of
columns of the design matrix X (n_rows, F), by its kind:

- ``numeric``: standardised, x = (v - mean(v)) / sd(v) over the table; a missing value is 0;
- ``categorical``: one-hot, one column ``"name=value"`` per distinct value; missing: none set;
- ``multilabel`` (``|``-separated, e.g. ``Action|Comedy``): multi-hot scaled by 1/sqrt(#labels);
- ``title`` (a movie title): the year of a trailing ``(1995)`` as a numeric ``year`` and a
  one-hot ``decade``; the title itself is dropped.

`align` puts the rows in the dense order of a `Ratings`' id map (row d holds the features of
the raw id of dense index d), so a model reads X[u] for dense user u; `row_of` finds the row of
an id the ratings do not have (a new user to fold in). MovieLens side files (``u.user``,
``u.item``, ``users.dat``, ``movies.dat``, ``movies.csv``) are read by
`probmf.data.movielens.load_features`.
"""

from __future__ import annotations

import io
import math
import os
import re
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt
import pandas as pd
import scipy.sparse as sp

from probmf.data.io.errors import RatingsFileError
from probmf.data.io.parse import _open_binary
from probmf.data.io.sniff import _detect_sep, _sep_name, _text_encoding, _TextFormat
from probmf.data.ratings import UNKNOWN, IdMap

__all__ = [
    "KINDS",
    "FeatureTable",
    "MissingFeaturesWarning",
    "align",
    "design_matrix",
    "from_columns",
    "plain_options",
    "read_features",
    "row_of",
]

KINDS = ("numeric", "categorical", "multilabel", "title")
# Header names taken for the id column when id_column is not given (compared lower-cased).
_ID_NAMES = ("userid", "movieid", "user_id", "item_id", "movie_id", "itemid", "id", "user", "item")
# MovieLens's label for a movie without genres: no label rather than a genre of its own.
_NO_LABELS = "(no genres listed)"
# "Heat (1995)", "Sherlock (2010–2017)", "Title (1995) " -> the (first) year.
_TITLE_YEAR = re.compile(r"\((\d{4})(?:[-\u2013]\d{4})?\)\s*$")
_INTEGER_ID = re.compile(r"\d{1,18}")  # up to 18 digits: always within int64


class FeatureTable(NamedTuple):
    """Attributes of users or items, one row per raw id, as a sparse design matrix.

    Attributes:
      ids: (n_rows,) raw ids in file order: int64 when every id is an integer, else str (as
        `IdMap` holds them).
      matrix: scipy.sparse CSR float64 (n_rows, F); row k holds the features of ``ids[k]``.
      names: F column names: ``"age"`` (numeric), ``"gender=M"`` (one-hot), ``"genre=Comedy"``
        (multi-hot).
      groups: F group names, the attribute each column came from (``"age"``, ``"gender"``,
        ``"genre"``, ``"year"``, ...).
      source: where the table came from (a path), for messages.
    """

    ids: np.ndarray
    matrix: sp.csr_matrix
    names: tuple[str, ...]
    groups: tuple[str, ...]
    source: str

    def describe(self) -> str:
        """One line for logs and JSON rows: source, shape and groups."""
        groups = ", ".join(dict.fromkeys(self.groups))
        return f"{self.source or 'features'}: {self.matrix.shape[0]} rows x {self.matrix.shape[1]} columns ({groups})"


def plain_options(options: dict) -> dict:
    """Fitter ``options`` as JSON can hold them (for result rows and saved models): a feature
    table as its one-line description (`FeatureTable.describe`), the rest as they are."""
    return {k: v.describe() if isinstance(v, FeatureTable) else v for k, v in options.items()}


class MissingFeaturesWarning(UserWarning):
    """Ids in the ratings without a row in the feature table (their rows of X are zero)."""


# ---- building a table --------------------------------------------------------------------


def from_columns(
    ids: Sequence | np.ndarray,
    columns: Mapping[str, Sequence],
    *,
    kinds: Mapping[str, str] | None = None,
    source: str = "",
) -> FeatureTable:
    """A `FeatureTable` from columns in memory, encoded as `read_features` encodes a file.

    Args:
      ids: (n_rows,) raw ids, each once.
      columns: name -> (n_rows,) values: numbers or text; ``None``, ``""`` or NaN is missing; a
        multilabel value is ``"a|b"`` or a sequence of labels.
      kinds: name -> one of `KINDS`; a column left out has its kind inferred (`read_features`).
      source: for messages, which name the 0-based row of a bad value.

    Returns:
      `FeatureTable` with its columns in the order of ``columns``.

    >>> t = from_columns([1, 2], {"gender": ["M", "F"], "age": [20, 30]})
    >>> t.names, t.matrix.toarray().tolist()
    (('gender=F', 'gender=M', 'age'), [[0.0, 1.0, -1.0], [1.0, 0.0, 1.0]])
    """
    source = source or "columns"
    n = len(ids)
    for name, values in columns.items():
        if len(values) != n:
            raise ValueError(f"{source}: column {name!r} has {len(values)} values for {n} ids")
    rows = _Rows(source, None)
    return _encode(_id_array(list(ids), rows), {k: list(v) for k, v in columns.items()}, kinds or {}, rows)


def read_features(
    path: str | os.PathLike[str],
    *,
    id_column: str | None = None,
    columns: Sequence[str] | None = None,
    kinds: Mapping[str, str] | None = None,
    sep: str | None = None,
    encoding: str = "utf-8",
) -> FeatureTable:
    """Read a table of attributes (one row per raw id, with a header) as a `FeatureTable`.

    Reads e.g. MovieLens ``movies.csv`` as it is (``movieId,title,genres``: the title gives
    ``year`` and ``decade``, the genres a scaled multi-hot). A column's kind is, unless
    ``kinds`` says: ``title`` for a column named ``title``, ``multilabel`` for one named
    ``genres`` or holding a value with ``|``, ``numeric`` when every value is a finite number,
    else ``categorical``. An empty field is a missing value (`FeatureTable` explains each kind).

    Args:
      path: the file; ``.gz``, ``.bz2`` and ``.xz`` are decompressed.
      id_column: the header name of the ids; None takes the first column named ``userId``,
        ``movieId``, ``user_id``, ``item_id``, ``id``, ``user`` or ``item`` (any case), else
        the first column.
      columns: the feature columns to keep, in this order; None keeps every other column.
      kinds: column name -> one of `KINDS`, e.g. ``{"zip": "categorical"}`` for zip codes.
      sep: field separator; None detects tab, ``::``, comma, semicolon or ``|`` from the header.
      encoding: text encoding (e.g. ``"latin-1"``); a UTF-8 byte-order mark is skipped.

    Returns:
      `FeatureTable` with ``source`` set to ``str(path)``.

    Raises:
      RatingsFileError: naming the file and line: an empty file or one with only a header, no
        such id column, a row with the wrong number of fields, an empty or repeated id (both
        lines named), a value of a column made numeric by ``kinds`` that is not a finite number,
        or text that is not valid in ``encoding``.
    """
    path = Path(os.fspath(path))
    lines = _read_lines(path, encoding)
    if not lines:
        raise RatingsFileError(f"{path}: no rows (the file is empty)", path=path)
    head_no, head = lines[0]
    fmt = _TextFormat(sep or _detect_sep(head), encoding, 0)
    names = [name.strip().strip("\"'") for name in fmt.split(head)]
    fmt.ncol = len(names)

    def header_error(what: str) -> RatingsFileError:
        return RatingsFileError(f"{path}, line {head_no}: {what}", path=path, line=head_no, value=head)

    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise header_error(f"header {names} repeats the column name {repeated[0]!r}")
    if id_column is None:
        id_pos = next((k for k, name in enumerate(names) if name.lower() in _ID_NAMES), 0)
    elif id_column in names:
        id_pos = names.index(id_column)
    else:
        raise header_error(f"header {names} has no id column {id_column!r}")
    keep = [name for k, name in enumerate(names) if k != id_pos] if columns is None else list(columns)
    for name in keep:
        if name not in names or name == names[id_pos]:
            what = "is the id column" if name == names[id_pos] else f"is not in the header {names}"
            raise header_error(f"feature column {name!r} {what}")

    body = lines[1:]
    if not body:
        raise RatingsFileError(f"{path}: no rows (only the header, line {head_no})", path=path, line=head_no)
    table = []
    for number, line in body:
        fields = fmt.split(line)
        if len(fields) != fmt.ncol:
            raise RatingsFileError(
                f"{path}, line {number}: expected {fmt.ncol} fields separated by {_sep_name(fmt.sep)}, "
                f"found {len(fields)}: {line!r}",
                path=path,
                line=number,
                value=line,
            )
        table.append([field.strip() for field in fields])
    rows = _Rows(str(path), np.array([number for number, _ in body]))
    ids = _id_array([fields[id_pos] for fields in table], rows, names[id_pos])
    values = {name: [fields[k] for fields in table] for name, k in ((n, names.index(n)) for n in keep)}
    return _encode(ids, values, kinds or {}, rows)


# ---- aligning with ratings ---------------------------------------------------------------


def align(table: FeatureTable, id_map: IdMap) -> tuple[sp.csr_matrix, int]:
    """The design matrix of ``id_map``'s ids: X[d] = table.matrix[k] where ids[k] = id_map.raw[d].

    X = S @ table.matrix with the selection S (len(id_map), n_rows), S[d, k] = 1 when table row
    k holds the raw id of dense index d; an id with no table row gets a zero row of X, and rows
    of ids the map does not hold are left out (`row_of` still finds them).

    Args:
      table: (n_rows, F) features by raw id.
      id_map: the ratings' user or item ids (``ratings.user_ids``).

    Returns:
      (X, missing): X CSR float64 (len(id_map), F); missing, the number of ids of ``id_map``
      without a row in ``table``.
    """
    rows = _rows_of(table, id_map.raw)
    found = np.flatnonzero(rows != UNKNOWN)
    select = sp.csr_matrix((np.ones(found.size), (found, rows[found])), shape=(len(id_map), table.matrix.shape[0]))
    return (select @ table.matrix).tocsr(), int(len(id_map) - found.size)


def design_matrix(table: FeatureTable, id_map: IdMap) -> sp.csr_matrix:
    """`align`'s X (len(id_map), F), with a `MissingFeaturesWarning` naming how many ids of
    ``id_map`` have no row in the table (and so a zero row of X) and the table's file."""
    matrix, missing = align(table, id_map)
    if missing:
        warnings.warn(
            f"{missing} of {len(id_map)} ids have no row in {table.source}; their features are all zero",
            MissingFeaturesWarning,
            stacklevel=2,
        )
    return matrix


def row_of(table: FeatureTable, raw_id: Any) -> sp.csr_matrix | None:
    """The features (1, F) CSR of one raw id (e.g. a new user's), or None when the table has
    no row for it. ``"12"`` finds integer id 12, as `IdMap.index` does."""
    k = int(_rows_of(table, [raw_id])[0])
    return None if k == UNKNOWN else table.matrix[[k]]


def _rows_of(table: FeatureTable, raw_ids: npt.ArrayLike) -> np.ndarray:
    """int (n,) table row of each raw id, or UNKNOWN; `IdMap.index` does the lookup, so ints
    and their strings match as in the ratings."""
    order = np.argsort(table.ids, kind="stable")
    pos = IdMap(table.ids[order]).index(raw_ids)
    return np.where(pos == UNKNOWN, UNKNOWN, order[np.maximum(pos, 0)]) if order.size else pos


# ---- encoding ----------------------------------------------------------------------------


class _Rows(NamedTuple):
    """Where row k of a table came from, for messages: a file's lines, or 0-based rows."""

    source: str
    lines: np.ndarray | None  # (n_rows,) 1-based file line of each row; None: rows in memory

    def where(self, k: int) -> tuple[str, int]:
        return ("row", k) if self.lines is None else ("line", int(self.lines[k]))

    def error(self, k: int, what: str, value: Any = None) -> RatingsFileError:
        unit, number = self.where(k)
        return RatingsFileError(f"{self.source}, {unit} {number}: {what}", path=self.source, line=number, value=value)


class _Block(NamedTuple):
    """The columns one attribute contributes to the design matrix."""

    names: tuple[str, ...]
    groups: tuple[str, ...]
    matrix: sp.csr_matrix  # (n_rows, len(names)) float64


def _encode(ids: np.ndarray, columns: dict[str, list], kinds: Mapping[str, str], rows: _Rows) -> FeatureTable:
    """Each column, by its kind (given or `_infer_kind`), as blocks of one design matrix."""
    unknown = [name for name in kinds if name not in columns]
    if unknown:
        raise ValueError(f"{rows.source}: kinds names {unknown}, which are not feature columns {list(columns)}")
    bad = {name: kind for name, kind in kinds.items() if kind not in KINDS}
    if bad:
        raise ValueError(f"{rows.source}: kinds {bad}: a kind is one of {', '.join(KINDS)}")
    blocks = [
        block
        for name, values in columns.items()
        for block in _blocks(name, kinds.get(name) or _infer_kind(name, values), values, rows)
    ]
    names = tuple(n for b in blocks for n in b.names)
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ValueError(f"{rows.source}: two columns both give the feature {twice[0]!r}; rename one")
    if blocks:
        matrix = sp.hstack([b.matrix for b in blocks], format="csr", dtype=np.float64)
    else:
        matrix = sp.csr_matrix((len(ids), 0), dtype=np.float64)
    matrix.eliminate_zeros()
    matrix.sort_indices()
    return FeatureTable(ids, matrix, names, tuple(g for b in blocks for g in b.groups), rows.source)


def _infer_kind(name: str, values: list) -> str:
    key = name.strip().lower()
    if key == "title":
        return "title"
    present = [v for v in values if not _missing(v)]
    if key == "genres" or any(isinstance(v, (list, tuple)) or "|" in str(v) for v in present):
        return "multilabel"
    if present and all(_finite(v) is not None for v in present):
        return "numeric"
    return "categorical"


def _blocks(name: str, kind: str, values: list, rows: _Rows) -> list[_Block]:
    if kind == "numeric":
        return [_numeric(name, _numbers(name, values, rows))]
    if kind == "categorical":
        return [_one_hot(name, ["" if _missing(v) else str(v).strip() for v in values])]
    if kind == "multilabel":
        return [_multi_hot(name, [_labels(v) for v in values])]
    years = np.array([_title_year(v) for v in values])
    return [_numeric("year", years), _one_hot("decade", [_decade(y) for y in years])]


def _numeric(group: str, values: np.ndarray) -> _Block:
    """x = (v - mean) / sd over the present values (sd with ddof 0), so X's column has mean 0
    and sd 1; a missing value (NaN) is 0, the mean; a constant column is all 0 (it carries no
    information beside an intercept)."""
    x = np.zeros(values.shape)
    present = ~np.isnan(values)
    v = values[present]
    if v.size and np.ptp(v) > 0:
        x[present] = (v - v.mean()) / v.std()
    return _Block((group,), (group,), sp.csr_matrix(x[:, None]))


def _one_hot(group: str, values: list[str]) -> _Block:
    """x[k, j] = 1 when row k's value is the j-th distinct value (sorted); "" sets nothing."""
    cats = sorted({v for v in values if v})
    col = {c: j for j, c in enumerate(cats)}
    ks = [k for k, v in enumerate(values) if v]
    matrix = sp.csr_matrix((np.ones(len(ks)), (ks, [col[values[k]] for k in ks])), shape=(len(values), len(cats)))
    return _Block(tuple(f"{group}={c}" for c in cats), (group,) * len(cats), matrix)


def _multi_hot(group: str, labels: list[tuple[str, ...]]) -> _Block:
    """x[k, j] = 1/sqrt(|L_k|) for each label j in row k's labels L_k (sorted columns)."""
    cats = sorted({label for row in labels for label in row})
    col = {c: j for j, c in enumerate(cats)}
    ks = [k for k, row in enumerate(labels) for _ in row]
    js = [col[label] for row in labels for label in row]
    # Scaled so each row's group has unit norm, as a one-hot row has, whatever its number of
    # labels (SVD++'s |N(u)|^-1/2): a movie with five genres then gets the average of their
    # weights, not five times the pull of a movie with one.
    weights = [1.0 / math.sqrt(len(row)) for row in labels for _ in row]
    matrix = sp.csr_matrix((weights, (ks, js)), shape=(len(labels), len(cats)))
    return _Block(tuple(f"{group}={c}" for c in cats), (group,) * len(cats), matrix)


def _numbers(name: str, values: list, rows: _Rows) -> np.ndarray:
    """float64 (n,) of a numeric column; NaN where missing; anything else is an error."""
    out = np.full(len(values), np.nan)
    for k, v in enumerate(values):
        if _missing(v):
            continue
        x = _finite(v)
        if x is None:
            raise rows.error(k, f"{name} value {v!r} is not a finite number (the {name} column is numeric)", v)
        out[k] = x
    return out


def _labels(value: Any) -> tuple[str, ...]:
    """The distinct labels of a multilabel value (``"a|b"`` or a sequence), in order."""
    if _missing(value):
        return ()
    parts = value if isinstance(value, (list, tuple)) else str(value).split("|")
    return tuple(dict.fromkeys(p for p in (str(p).strip() for p in parts) if p and p != _NO_LABELS))


def _title_year(title: Any) -> float:
    match = None if _missing(title) else _TITLE_YEAR.search(str(title))
    return float(match.group(1)) if match else np.nan


def _decade(year: float) -> str:
    return "" if np.isnan(year) else f"{int(year) // 10 * 10}s"


def _missing(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, str):
        return not value.strip()
    return isinstance(value, (float, np.floating)) and bool(np.isnan(value))


def _finite(value: Any) -> float | None:
    if isinstance(value, (bool, np.bool_, list, tuple)):
        return None
    try:
        x = float(str(value).strip()) if isinstance(value, str) else float(value)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def _id_array(values: list, rows: _Rows, name: str = "id") -> np.ndarray:
    """(n,) raw ids: int64 when each is an integer (digits only, as the ratings readers take
    them), else str; an empty or repeated id is an error naming its row(s)."""
    empty = [k for k, v in enumerate(values) if _missing(v)]
    if empty:
        raise rows.error(empty[0], f"no id (the {name} field is empty)", "")
    array = np.asarray(values)
    if array.dtype.kind not in "iu":
        texts = [str(v).strip() for v in values]
        array = np.array(texts, dtype=np.int64) if all(_INTEGER_ID.fullmatch(t) for t in texts) else np.array(texts)
    array = array.astype(np.int64) if array.dtype.kind in "iu" else array.astype(str)
    repeat = pd.Series(array).duplicated().to_numpy()
    if repeat.any():
        k = int(np.argmax(repeat))
        first = int(np.argmax(array == array[k]))
        unit, number = rows.where(first)
        what = f"id {array[k].item()!r} appears twice (also on {unit} {number}); one row per id"
        raise rows.error(k, what, values[k])
    return array


def _read_lines(path: Path, encoding: str) -> list[tuple[int, str]]:
    """(1-based line number, text) of the file's non-blank lines; undecodable text is an error
    naming its line."""
    if not path.is_file():
        raise FileNotFoundError(f"feature file not found: {path}")
    with _open_binary(path) as f:
        raw = f.read()
    try:
        text = raw.decode(_text_encoding(encoding))
    except UnicodeDecodeError as err:
        line = raw.count(b"\n", 0, err.start) + 1
        value = raw.split(b"\n")[line - 1].rstrip(b"\r")
        raise RatingsFileError(
            f"{path}, line {line}: not valid {encoding} text: {value!r}; pass encoding= the file's encoding",
            path=path,
            line=line,
            value=value,
        ) from None
    # Universal newlines, as the ratings reader counts lines (\n, \r\n or \r end one).
    numbered = enumerate(io.StringIO(text, newline=None), start=1)
    return [(number, line.rstrip("\n")) for number, line in numbered if line.strip()]


def _split_lines(path: Path, lines: list[tuple[int, str]], sep: str, fields: int) -> tuple[list[list[str]], _Rows]:
    """Headerless lines of exactly ``fields`` fields separated by ``sep`` (MovieLens ``.dat``,
    ``u.user``), stripped; a line with another count is an error naming it."""
    out = []
    for number, line in lines:
        parts = line.split(sep)
        if len(parts) != fields:
            raise RatingsFileError(
                f"{path}, line {number}: expected {fields} fields separated by {sep!r}, found {len(parts)}: {line!r}",
                path=path,
                line=number,
                value=line,
            )
        out.append([p.strip() for p in parts])
    return out, _Rows(str(path), np.array([number for number, _ in lines], dtype=np.int64))
