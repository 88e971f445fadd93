"""A parsed table's values checked, vectorised, and turned into `Ratings`.

Ids (non-negative integers up to 2**62, or strings), ratings (numbers, finite, at most 1e9 in
magnitude, within ``rating_scale``), timestamps (integers) and repeated (user, item) pairs; the
earliest problem in the file is raised, naming its line. A pandas DataFrame is checked the same
way (`read_dataframe`, its columns found by `dataframe_columns`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from probmf.data.io.errors import RatingsFileError
from probmf.data.io.parse import _file_line, _Source
from probmf.data.io.sniff import _ROLE_NAMES, _is_number, _role_of, _sep_name
from probmf.data.ratings import IdMap, Ratings

_MAX_ID = 2**62  # ids stay exact in float64 parsing and in int64 arithmetic
_TOO_LARGE = "{name} {{value}} is too large (ids are integers in [0, 2**62])"
# Largest |rating|: squares summed over a billion ratings stay far below float32's maximum
# (3.4e38), so no fitter's sums of squares or Gram matrices can overflow.
_MAX_RATING = 1e9
_HUGE_RATING = "rating {value} is too large in magnitude (|rating| <= 1e9; rescale the ratings)"


def read_dataframe(
    df: pd.DataFrame,
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


def to_ratings(
    data: Ratings | pd.DataFrame,
    *,
    columns: Sequence | None = None,
    rating_scale: tuple[float, float] | None = None,
    duplicates: str = "error",
) -> Ratings:
    """``data`` as `Ratings`: a `Ratings` as it is, a DataFrame checked by `read_dataframe`."""
    if isinstance(data, Ratings):
        return data
    return read_dataframe(data, columns=columns, rating_scale=rating_scale, duplicates=duplicates)


def dataframe_columns(
    df: pd.DataFrame,
    columns: Sequence | None = None,
    *,
    name: str = "DataFrame",
    need: Sequence[str] = ("user", "item", "rating"),
) -> dict:
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


def _check_options(duplicates: str, id_type: str, rating_scale: tuple[float, float] | None) -> None:
    if id_type not in ("auto", "int", "str"):
        raise ValueError(f"id_type must be 'auto', 'int' or 'str', got {id_type!r}")
    if duplicates not in ("error", "last", "mean"):
        raise ValueError(f"duplicates must be 'error', 'last' or 'mean', got {duplicates!r}")
    _scale(rating_scale)


def _scale(rating_scale: tuple[float, float] | None) -> tuple[float, float] | None:
    if rating_scale is None:
        return None
    low, high = (float(v) for v in rating_scale)
    if not low <= high:
        raise ValueError(f"rating_scale must be (low, high) with low <= high, got {rating_scale!r}")
    return low, high


class _Problems:
    """Collects the first bad row of each check; the earliest one in the file is raised."""

    def __init__(self, src: _Source) -> None:
        self.src = src
        self.first: tuple[int, str, Any, Any] | None = None

    def add(self, mask: np.ndarray, what: Callable[[int], tuple[str, Any]], role: str | None = None) -> None:
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


def _py(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


def _raw_value(col: pd.Series, pos: int) -> Any:
    return _py(col.iloc[pos])


def _about(col: pd.Series, template: str) -> Callable[[int], tuple[str, Any]]:
    """``what(pos)`` for `_Problems.add`: ``template`` with ``{value}`` set to the row's value."""

    def what(pos: int) -> tuple[str, Any]:
        value = _raw_value(col, pos)
        return template.format(value=repr(value)), value

    what.column = col.name  # type: ignore[attr-defined]  # read back by _Problems.add
    return what


def _missing(src: _Source, role: str, pos: int) -> tuple[str, Any]:
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


def _numeric_ids(num: np.ndarray, col: pd.Series, skip: np.ndarray, name: str, problems: _Problems) -> np.ndarray:
    ok = ~skip
    with np.errstate(invalid="ignore"):
        nonint = ok & ((num != np.floor(num)) | ~np.isfinite(num))
        negative = ok & ~nonint & (num < 0)
        too_large = ok & ~nonint & (num > _MAX_ID)
    problems.add(nonint, _about(col, f"{name} {{value}} is not an integer"))
    problems.add(negative, _about(col, f"{name} {{value}} is negative"))
    problems.add(too_large, _about(col, _TOO_LARGE.format(name=name)))
    return np.where(ok & ~nonint & ~negative & ~too_large, num, 0).astype(np.int64)


def _check_ratings(src: _Source, scale: tuple[float, float] | None, problems: _Problems) -> np.ndarray:
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


def _to_ratings(src: _Source, *, rating_scale: tuple[float, float] | None, duplicates: str, id_type: str) -> Ratings:
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
