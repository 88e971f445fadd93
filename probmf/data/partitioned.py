"""Ratings written once as Parquet, split by row range, so each process reads only its rows.

`partition` writes a training set to a folder DIR:

    DIR/meta.json           sizes, the rating count and sum, the mean mu, the block sizes
    DIR/user_ids.npy        raw user ids in dense order (int64 or unicode; never pickled)
    DIR/item_ids.npy        raw item ids in dense order
    DIR/user_counts.npy     int64 (num_users,) ratings per user
    DIR/item_counts.npy     int64 (num_items,) ratings per item
    DIR/by_user/part-PPPPP.parquet   the ratings of users [P b_u, (P + 1) b_u)
    DIR/by_item/part-PPPPP.parquet   the ratings of items [P b_i, (P + 1) b_i)

with b_u = ceil(num_users / parts) and b_i = ceil(num_items / parts). Each Parquet file holds
columns user, item (int32 dense indices), rating (float32)[, timestamp (int64)], sorted by
its side's index and, within a row, in the order of the input: the order the in-memory
encoding sorts them to, so a fit from DIR is bit for bit the fit of the `Ratings`.

`load_rows(part, side, lo, hi)` reads the ratings whose user (``side="user"``) or item index
lies in [lo, hi) with ``pyarrow.dataset``, opening only the files whose block meets the
range. Everything a fit needs of all ratings (their number, mu, each row's count) is in the
metadata, so no process ever holds another process's ratings.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import NamedTuple

import numpy as np

from probmf.data.ratings import IdMap, Ratings

FORMAT = "probmf-partitioned"
VERSION = 1
SIDES = ("user", "item")


class PartitionError(ValueError):
    """A partitioned folder that cannot be read: missing or damaged files, inconsistent counts."""


@dataclasses.dataclass(frozen=True)
class PartitionedRatings:
    """An opened partitioned folder (`open_partitioned`): everything but the ratings.

    path: the folder; user_ids, item_ids: `IdMap`; user_counts, item_counts: int64 ratings
    per row; mu: the mean rating (float64, as ``np.mean(values, dtype=float64)``);
    rating_sum: their float64 sum; blocks: rows per file of each side; digest: a hash of the
    ratings (for checkpoint fingerprints); has_timestamps: whether the files hold timestamps.
    """

    path: Path
    user_ids: IdMap
    item_ids: IdMap
    user_counts: np.ndarray
    item_counts: np.ndarray
    mu: float
    rating_sum: float
    rating_range: tuple[float, float]
    parts: int
    blocks: dict
    digest: str
    has_timestamps: bool
    source: str = ""

    @property
    def num_users(self) -> int:
        return len(self.user_ids)

    @property
    def num_items(self) -> int:
        return len(self.item_ids)

    def __len__(self) -> int:
        return int(self.user_counts.sum())

    def num_rows(self, side: str) -> int:
        return self.num_users if _check_side(side) == "user" else self.num_items

    def counts(self, side: str) -> np.ndarray:
        return self.user_counts if _check_side(side) == "user" else self.item_counts

    def files(self, side: str, lo: int, hi: int) -> list[Path]:
        """The files holding rows [lo, hi) of ``side``: those whose block meets the range."""
        block = self.blocks[_check_side(side)]
        if hi <= lo:
            return []
        return [_part_path(self.path, side, b) for b in range(lo // block, (hi - 1) // block + 1)]

    def __repr__(self) -> str:
        return (f"PartitionedRatings(n={len(self)}, num_users={self.num_users}, num_items={self.num_items}, "
                f"parts={self.parts}, path={str(self.path)!r})")  # fmt: skip


class RowRatings(NamedTuple):
    """Ratings of one range of rows: rows (int32, absolute indices of ``side``), cols (the
    other side's int32 indices), vals (float32), and the files they were read from."""

    rows: np.ndarray
    cols: np.ndarray
    vals: np.ndarray
    files: tuple[str, ...]


def _check_side(side: str) -> str:
    if side not in SIDES:
        raise ValueError(f"side must be one of {SIDES}, got {side!r}")
    return side


def _part_path(folder: Path, side: str, block: int) -> Path:
    return Path(folder) / f"by_{side}" / f"part-{block:05d}.parquet"


def partition(
    ratings: Ratings, out: str | os.PathLike[str], parts: int, *, source: str | None = None
) -> PartitionedRatings:
    """Write ``ratings`` to the folder ``out`` split into ``parts`` row blocks per side (see
    the module docstring) and return it opened. ``out`` is written in a temporary folder
    beside it and then renamed: a folder a previous `partition` wrote is replaced, anything
    else there is an error."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from probmf.checkpoint import fingerprint

    if isinstance(parts, bool) or int(parts) != parts or parts < 1:
        raise ValueError(f"parts must be a positive integer, got {parts!r}")
    parts = int(parts)
    name = source or ratings.source or "ratings"
    if len(ratings) == 0:
        raise ValueError(f"{name}: no ratings to partition")
    if not np.all(ratings.known):
        raise ValueError(f"{name}: unknown (-1) ids cannot be partitioned")
    if not np.all(np.isfinite(ratings.values)):
        raise ValueError(f"{name}: ratings must be finite")
    for side, ids in (("user", ratings.user_ids), ("item", ratings.item_ids)):
        if ids.raw.dtype.kind not in "iuU":
            raise ValueError(f"{name}: {side} ids of dtype {ids.raw.dtype} cannot be stored without pickle")
    out = Path(out)
    if out.exists() and not (out.is_dir() and ((out / "meta.json").is_file() or not any(out.iterdir()))):
        raise ValueError(f"{out} exists and is not a partitioned ratings folder; choose another --out")
    out.parent.mkdir(parents=True, exist_ok=True)

    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        columns = {"user": ratings.users, "item": ratings.items, "rating": ratings.values}
        if ratings.timestamps is not None:
            columns["timestamp"] = ratings.timestamps
        sizes = {"user": ratings.num_users, "item": ratings.num_items}
        blocks = {side: -(-sizes[side] // parts) for side in SIDES}
        for side in SIDES:
            (tmp / f"by_{side}").mkdir()
            # Sorted by row, stably: each row's ratings stay in input order, a reader gets
            # them in the order the encoding would sort them to, and row groups are ranges.
            order = np.argsort(columns[side], kind="stable")
            bounds = np.searchsorted(columns[side][order], np.arange(parts + 1) * blocks[side])
            for b in range(parts):
                take = order[bounds[b] : bounds[b + 1]]
                table = pa.table({k: v[take] for k, v in columns.items()})
                pq.write_table(table, _part_path(tmp, side, b))
                del table, take
            del order
        counts = {side: np.bincount(columns[side], minlength=sizes[side]).astype(np.int64) for side in SIDES}
        for side, ids in (("user", ratings.user_ids), ("item", ratings.item_ids)):
            np.save(tmp / f"{side}_ids.npy", ids.raw, allow_pickle=False)
            np.save(tmp / f"{side}_counts.npy", counts[side], allow_pickle=False)
        meta = {
            "format": FORMAT,
            "version": VERSION,
            "num_users": sizes["user"],
            "num_items": sizes["item"],
            "num_ratings": len(ratings),
            # mu exactly as the in-memory fitters compute it, so fits from here equal theirs.
            "mu": float(np.mean(ratings.values, dtype=np.float64)),
            "rating_sum": float(np.sum(ratings.values, dtype=np.float64)),
            "rating_range": [float(ratings.values.min()), float(ratings.values.max())],
            "parts": parts,
            "blocks": blocks,
            "has_timestamps": ratings.timestamps is not None,
            "digest": fingerprint(ratings.users, ratings.items, ratings.values),
            "source": name,
        }
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return open_partitioned(out)


def open_partitioned(path: str | os.PathLike[str]) -> PartitionedRatings:
    """Open a folder `partition` wrote: its metadata, id maps and counts, checked against each
    other (no ratings are read). Raises `PartitionError` naming the file at fault."""
    path = Path(path)
    meta_path = path / "meta.json"
    if not meta_path.is_file():
        raise FileNotFoundError(f"{path} is not a partitioned ratings folder: {meta_path} not found")
    try:
        meta = json.loads(meta_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise PartitionError(f"{meta_path}: not valid JSON ({err})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise PartitionError(f"{meta_path}: not a {FORMAT} folder")
    if meta.get("version") != VERSION:
        raise PartitionError(f"{meta_path}: version {meta.get('version')!r}, this probmf reads version {VERSION}")
    missing = [k for k in ("num_users", "num_items", "num_ratings", "mu", "rating_sum", "rating_range", "parts",
                           "blocks", "digest", "has_timestamps") if k not in meta]  # fmt: skip
    if missing:
        raise PartitionError(f"{meta_path}: missing {missing}")

    def array(name: str, length: int, kinds: str) -> np.ndarray:
        file = path / name
        try:
            a = np.load(file, allow_pickle=False)
        except (OSError, ValueError) as err:
            raise PartitionError(f"{file}: cannot be read ({err})") from None
        if a.ndim != 1 or a.size != length or a.dtype.kind not in kinds:
            raise PartitionError(f"{file}: expected {length} values, got shape {a.shape} of dtype {a.dtype}")
        return a

    sizes = {"user": meta["num_users"], "item": meta["num_items"]}
    ids, counts = {}, {}
    for side in SIDES:
        try:
            ids[side] = IdMap(array(f"{side}_ids.npy", sizes[side], "iuU"))
        except ValueError as err:
            raise PartitionError(f"{path / f'{side}_ids.npy'}: {err}") from None
        counts[side] = array(f"{side}_counts.npy", sizes[side], "iu").astype(np.int64)
        if counts[side].min(initial=0) < 0 or int(counts[side].sum()) != meta["num_ratings"]:
            raise PartitionError(f"{path / f'{side}_counts.npy'}: counts do not sum to {meta['num_ratings']} ratings")
        if meta["blocks"].get(side) != -(-sizes[side] // meta["parts"]):
            raise PartitionError(f"{meta_path}: block size of {side}s does not match {meta['parts']} parts")
        for b in range(meta["parts"]):
            if not _part_path(path, side, b).is_file():
                raise PartitionError(f"{_part_path(path, side, b)}: missing")
    return PartitionedRatings(
        path=path,
        user_ids=ids["user"],
        item_ids=ids["item"],
        user_counts=counts["user"],
        item_counts=counts["item"],
        mu=float(meta["mu"]),
        rating_sum=float(meta["rating_sum"]),
        rating_range=(float(meta["rating_range"][0]), float(meta["rating_range"][1])),
        parts=int(meta["parts"]),
        blocks=dict(meta["blocks"]),
        digest=str(meta["digest"]),
        has_timestamps=bool(meta["has_timestamps"]),
        source=str(meta.get("source", path)),
    )


def load_rows(part: PartitionedRatings, side: str, lo: int, hi: int, *, batch_size: int = 1 << 20) -> RowRatings:
    """The ratings whose ``side`` index lies in [lo, hi), sorted by row and in input order
    within each row, read from the files of the blocks meeting that range only, up to
    ``batch_size`` at a time. Their count per row is checked against the metadata
    (`PartitionError` naming the file otherwise)."""
    import pyarrow as pa
    import pyarrow.dataset as ds

    other = "item" if _check_side(side) == "user" else "user"
    n = part.num_rows(side)
    if not (0 <= lo <= hi <= n):
        raise ValueError(f"row range [{lo}, {hi}) is outside [0, {n}) of the {side}s")
    files = part.files(side, lo, hi)
    # The counts say how many ratings come: they are read batch by batch into arrays of that
    # size, so the peak is the result and one batch, never a second copy of the range.
    total = int(part.counts(side)[lo:hi].sum())
    rows, cols, vals = np.empty(total, np.int32), np.empty(total, np.int32), np.empty(total, np.float32)
    k, field = 0, ds.field(side)
    for file in files:
        try:  # one thread: the batches come in the order they were written
            scanner = ds.dataset(file, format="parquet").scanner(
                columns=[side, other, "rating"], filter=(field >= lo) & (field < hi), use_threads=False,
                batch_size=batch_size,
            )  # fmt: skip
            for batch in scanner.to_batches():
                n_batch = batch.num_rows
                if k + n_batch > total:
                    raise PartitionError(f"{file}: more ratings of {side}s [{lo}, {hi}) than {side}_counts.npy says")
                rows[k : k + n_batch] = batch.column(side).to_numpy()
                cols[k : k + n_batch] = batch.column(other).to_numpy()
                vals[k : k + n_batch] = batch.column("rating").to_numpy()
                k += n_batch
        except PartitionError:
            raise
        except Exception as err:  # pyarrow raises several types for a damaged file
            raise PartitionError(f"{file}: cannot be read ({err})") from None
    pa.default_memory_pool().release_unused()  # Arrow's allocator keeps freed batches otherwise
    out = RowRatings(rows[:k], cols[:k], vals[:k], tuple(map(str, files)))
    m = part.num_rows(other)
    if out.cols.size and (out.cols.min() < 0 or out.cols.max() >= m):
        raise PartitionError(f"{part.path / f'by_{side}'}: {other} index outside [0, {m})")
    if not np.all(np.isfinite(out.vals)):
        raise PartitionError(f"{part.path / f'by_{side}'}: non-finite rating")
    found = np.bincount(out.rows, minlength=hi)[lo:]  # the filter keeps rows in [lo, hi)
    expected = part.counts(side)[lo:hi]
    if np.any(found != expected):
        bad = int(np.flatnonzero(found != expected)[0])
        raise PartitionError(
            f"{part.path / f'by_{side}'}: {side} {lo + bad} has {found[bad]} ratings in the files but "
            f"{expected[bad]} in {side}_counts.npy"
        )
    return out


def read_all(part: PartitionedRatings) -> Ratings:
    """Every rating of ``part`` as `Ratings` (in user-block order), e.g. to check a folder."""
    r = load_rows(part, "user", 0, part.num_users)
    return Ratings(r.rows, r.cols, r.vals, part.user_ids, part.item_ids, source=part.source)
