"""The `Ratings` container: observed (user, item, rating) triples with id maps.

Host-side (numpy) data; the sparse encoding for the device lives in `probmf.encoding`.
Dense indices are int32 in ``[0, num_users)`` / ``[0, num_items)``; the index ``-1``
marks an id that the id map does not know (a *cold* user or item in a test set).
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    import pandas as pd
    import scipy.sparse as sp

UNKNOWN = -1  # dense index of an id absent from the id map


@dataclasses.dataclass(frozen=True)
class IdMap:
    """Bijection between raw ids (ints or strings) and dense indices ``0..len-1``.

    ``raw`` is sorted and unique, so ``raw[k]`` is the raw id of dense index ``k`` and the
    lookup is a binary search.
    """

    raw: np.ndarray

    def __post_init__(self) -> None:
        raw = np.asarray(self.raw)
        if raw.ndim != 1:
            raise ValueError(f"IdMap needs a 1-d array of raw ids, got shape {raw.shape}")
        if raw.size > 1 and not np.all(raw[1:] > raw[:-1]):
            raise ValueError("IdMap raw ids must be sorted and unique")
        object.__setattr__(self, "raw", raw)

    @classmethod
    def identity(cls, n: int) -> IdMap:
        """Raw ids ``0..n-1`` (synthetic data)."""
        return cls(np.arange(n, dtype=np.int64))

    @classmethod
    def encode(cls, raw_ids: npt.ArrayLike) -> tuple[IdMap, np.ndarray]:
        """Build the map of the distinct ids in ``raw_ids``; return it and their int32 indices."""
        raw_ids = _as_id_array(raw_ids)
        uniq, inverse = np.unique(raw_ids, return_inverse=True)
        return cls(uniq), inverse.astype(np.int32).reshape(-1)

    def __len__(self) -> int:
        return int(self.raw.size)

    def index(self, raw_ids: npt.ArrayLike) -> np.ndarray:
        """Dense int32 indices of ``raw_ids``; ids not in the map get ``UNKNOWN`` (-1)."""
        raw_ids = _as_id_array(raw_ids)
        if self.raw.size == 0:
            return np.full(raw_ids.shape, UNKNOWN, np.int32)
        valid = np.ones(raw_ids.shape, bool)
        if self.raw.dtype.kind in "iu" and raw_ids.dtype.kind not in "iu":
            # Each query on its own: "12" or 12.0 is id 12; "x", 2.5, NaN match nothing.
            raw_ids, valid = _integer_ids(raw_ids)
        elif self.raw.dtype.kind in "US" and raw_ids.dtype.kind not in "US":
            raw_ids = raw_ids.astype(str)
        pos = np.searchsorted(self.raw, raw_ids)
        pos_c = np.minimum(pos, self.raw.size - 1)
        found = valid & (self.raw[pos_c] == raw_ids)
        return np.where(found, pos_c, UNKNOWN).astype(np.int32)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, IdMap) and self.raw.shape == other.raw.shape and bool(np.all(self.raw == other.raw))

    __hash__ = None  # type: ignore[assignment]  # unhashable: __eq__ compares the arrays


def _integer_ids(raw_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(int64 ids, valid) for queries that are not integers: floats equal to an integer,
    or strings holding one, are valid; anything else gets 0 and valid False."""
    if raw_ids.dtype.kind == "f":
        with np.errstate(invalid="ignore"):
            valid = np.isfinite(raw_ids) & (raw_ids == np.floor(raw_ids)) & (np.abs(raw_ids) < 2.0**63)
        return np.where(valid, raw_ids, 0).astype(np.int64), valid
    if raw_ids.dtype.kind == "b":
        return np.zeros(raw_ids.shape, np.int64), np.zeros(raw_ids.shape, bool)
    out = np.zeros(raw_ids.shape, np.int64)
    valid = np.zeros(raw_ids.shape, bool)
    for k, text in enumerate(raw_ids.astype(str).tolist()):
        try:
            value = int(text)
        except ValueError:
            continue
        if -(2**63) <= value < 2**63:
            out[k], valid[k] = value, True
    return out, valid


def _as_id_array(raw_ids: npt.ArrayLike) -> np.ndarray:
    a = np.asarray(raw_ids)
    if a.dtype == object:
        # Mixed or string ids from pandas: compare as strings.
        a = a.astype(str)
    return a.reshape(-1)


@dataclasses.dataclass(frozen=True)
class Ratings:
    """Observed ratings r[k] given by user ``users[k]`` to item ``items[k]``.

    Attributes:
      users, items: int32 (n,) dense indices; ``-1`` marks an id unknown to the id maps
        (only in data re-expressed in another set's id space, see `reindex`).
      values: float32 (n,) ratings.
      user_ids, item_ids: `IdMap` between raw ids and dense indices.
      timestamps: optional int64 (n,) (seconds), used by temporal splits.
      source: where the data came from, for messages (a path or a description).
    """

    users: np.ndarray
    items: np.ndarray
    values: np.ndarray
    user_ids: IdMap
    item_ids: IdMap
    timestamps: np.ndarray | None = None
    source: str = ""

    def __post_init__(self) -> None:
        users = np.ascontiguousarray(self.users, dtype=np.int32).reshape(-1)
        items = np.ascontiguousarray(self.items, dtype=np.int32).reshape(-1)
        values = np.ascontiguousarray(self.values, dtype=np.float32).reshape(-1)
        n = users.size
        if items.size != n or values.size != n:
            raise ValueError(f"users, items and values must have the same length, got {n}, {items.size}, {values.size}")
        for name, idx, m in (("user", users, len(self.user_ids)), ("item", items, len(self.item_ids))):
            if n and (idx.min() < UNKNOWN or idx.max() >= m):
                bad = idx[(idx < UNKNOWN) | (idx >= m)][0]
                raise ValueError(f"{name} index {bad} is outside [-1, {m}) in {self.source or 'ratings'}")
        ts = self.timestamps
        if ts is not None:
            ts = np.ascontiguousarray(ts, dtype=np.int64).reshape(-1)
            if ts.size != n:
                raise ValueError(f"timestamps must have length {n}, got {ts.size}")
        object.__setattr__(self, "users", users)
        object.__setattr__(self, "items", items)
        object.__setattr__(self, "values", values)
        object.__setattr__(self, "timestamps", ts)

    # ---- construction -------------------------------------------------------------------
    @classmethod
    def from_raw(
        cls,
        raw_users: npt.ArrayLike,
        raw_items: npt.ArrayLike,
        values: npt.ArrayLike,
        timestamps: npt.ArrayLike | None = None,
        *,
        source: str = "",
    ) -> Ratings:
        """Build from raw ids; the id maps are the distinct ids seen here."""
        user_ids, users = IdMap.encode(raw_users)
        item_ids, items = IdMap.encode(raw_items)
        ts = None if timestamps is None else np.asarray(timestamps)
        return cls(users, items, np.asarray(values), user_ids, item_ids, ts, source)

    @classmethod
    def from_dataframe(
        cls,
        df: pd.DataFrame,
        *,
        user_col: str = "userId",
        item_col: str = "movieId",
        rating_col: str = "rating",
        timestamp_col: str | None = "timestamp",
        source: str = "",
        **checks: Any,
    ) -> Ratings:
        """Build from a pandas DataFrame with one row per rating (raw ids), checked as a
        ratings file is (`probmf.data.io.read_dataframe`, which also finds the columns by
        name; ``checks``: its rating_scale, duplicates, id_type)."""
        from probmf.data.io import read_dataframe  # io builds on this module

        columns = [user_col, item_col, rating_col]
        if timestamp_col is not None and timestamp_col in df.columns:
            columns.append(timestamp_col)
        return read_dataframe(df, columns=columns, name=source or "DataFrame", **checks)

    @classmethod
    def from_scipy(
        cls, matrix: sp.spmatrix | sp.sparray, *, user_ids: IdMap | None = None, item_ids: IdMap | None = None
    ) -> Ratings:
        """Build from a scipy.sparse matrix whose stored entries are the ratings (rows = users)."""
        coo = matrix.tocoo()
        n_users, n_items = coo.shape
        return cls(
            coo.row,
            coo.col,
            coo.data,
            user_ids or IdMap.identity(n_users),
            item_ids or IdMap.identity(n_items),
            source="scipy.sparse matrix",
        )

    @classmethod
    def from_parquet(cls, path: str | os.PathLike[str], **columns: str) -> Ratings:
        """Read a Parquet file with columns userId, movieId, rating[, timestamp] (names overridable)."""
        import pandas as pd

        return cls.from_dataframe(pd.read_parquet(path), source=str(path), **columns)

    # ---- views --------------------------------------------------------------------------
    @property
    def num_users(self) -> int:
        return len(self.user_ids)

    @property
    def num_items(self) -> int:
        return len(self.item_ids)

    def __len__(self) -> int:
        return int(self.values.size)

    @property
    def known(self) -> np.ndarray:
        """bool (n,): both user and item are in the id maps."""
        return (self.users != UNKNOWN) & (self.items != UNKNOWN)

    def take(self, index: np.ndarray) -> Ratings:
        """The ratings at ``index`` (bool mask or integer array); id maps are kept."""
        ts = None if self.timestamps is None else self.timestamps[index]
        return dataclasses.replace(
            self, users=self.users[index], items=self.items[index], values=self.values[index], timestamps=ts
        )

    def reindex(self, user_ids: IdMap, item_ids: IdMap) -> Ratings:
        """The same ratings expressed in another id space (e.g. a training set's); ids that
        space does not know become ``UNKNOWN`` (-1)."""
        users = user_ids.index(self.raw_users())
        items = item_ids.index(self.raw_items())
        return dataclasses.replace(self, users=users, items=items, user_ids=user_ids, item_ids=item_ids)

    def raw_users(self) -> np.ndarray:
        return _raw_of(self.user_ids, self.users)

    def raw_items(self) -> np.ndarray:
        return _raw_of(self.item_ids, self.items)

    # ---- conversions --------------------------------------------------------------------
    def to_coo(self) -> sp.coo_matrix:
        """scipy.sparse COO matrix (num_users x num_items); requires every id to be known."""
        import scipy.sparse as sp

        self._require_known("to_coo")
        return sp.coo_matrix((self.values, (self.users, self.items)), shape=(self.num_users, self.num_items))

    def to_csr(self) -> sp.csr_matrix:
        """scipy.sparse CSR matrix (num_users x num_items). Duplicate pairs would be summed by
        scipy, so they are rejected here."""
        csr = self.to_coo().tocsr()
        if csr.nnz != len(self):
            raise ValueError(f"{self.source or 'ratings'} has duplicate (user, item) pairs; cannot build CSR")
        return csr

    def to_dataframe(
        self, *, user_col: str = "userId", item_col: str = "movieId", rating_col: str = "rating"
    ) -> pd.DataFrame:
        """pandas DataFrame of raw ids and ratings (and timestamps when present)."""
        import pandas as pd

        cols = {user_col: self.raw_users(), item_col: self.raw_items(), rating_col: self.values}
        if self.timestamps is not None:
            cols["timestamp"] = self.timestamps
        return pd.DataFrame(cols)

    def to_parquet(self, path: str | os.PathLike[str], **columns: str) -> None:
        """Write raw ids and ratings to Parquet, atomically (temp file, then rename)."""
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        self.to_dataframe(**columns).to_parquet(tmp, index=False)
        tmp.replace(path)

    def _require_known(self, what: str) -> None:
        if not np.all(self.known):
            raise ValueError(f"{what}: {self.source or 'ratings'} holds ids unknown to its id maps")

    def __repr__(self) -> str:
        src = f", source={self.source!r}" if self.source else ""
        return f"Ratings(n={len(self)}, num_users={self.num_users}, num_items={self.num_items}{src})"


def _raw_of(id_map: IdMap, index: np.ndarray) -> np.ndarray:
    """Raw ids of dense indices; an unknown index has no raw id, so this needs all known."""
    if index.size and index.min() < 0:
        raise ValueError("ratings hold unknown ids (-1); their raw ids were not kept")
    return id_map.raw[index]
