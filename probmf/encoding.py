"""Sparse encoding of the ratings for row-wise solvers (ALS, Gibbs).

The ratings of one side (rows = users, or rows = items) are sorted by row and cut into
tiles of ``tile_len`` entries; a row with n ratings owns ceil(n / tile_len) tiles and its
last tile is padded. Rows are grouped into blocks of ``block_rows`` consecutive rows, and
each block's tiles into whole chunks of ``chunk`` tiles, so a fitter can loop over blocks
and, inside a block, `lax.scan`-like over its chunks with fixed shapes:

    rows:   int32 (num_chunks, chunk)             row of each tile, relative to its block
    cols:   int32 (num_chunks, chunk, tile_len)   column (other side) index of each entry
    vals:   float32 (num_chunks, chunk, tile_len) rating of each entry
    starts: int32 (num_blocks + 1,)               chunks of block b: starts[b]:starts[b+1]

A padded entry has ``cols == num_cols`` (one past the last column): the fitter appends a
zero row to the other side's factor table there, so padding adds nothing to a Gram.
Fixed-length tiles compile once and are indifferent to the heavy skew of row lengths
(a few items hold ~1M ratings at ML-20M scale); blocks bound the memory of the row Grams
to block_rows x (k+1)^2 floats whatever the number of rows.

Across D devices (``mesh``, `probmf.sharding`) the rows are cut into D contiguous ranges of
ceil(num_rows / D) rows, each range is tiled as above, padded to common shapes and placed on
its device: rows, cols, vals and starts gain a leading (D,) axis. From a partitioned folder
(`encode_partitioned`) each process reads and tiles only its own devices' ranges and pads
them to the shapes every range's counts give (`tile_shape`), so the result is the same.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import scipy.sparse as sp
from jax.sharding import Mesh
from jax.typing import ArrayLike

from probmf.data.partitioned import PartitionedRatings
from probmf.data.ratings import Ratings
from probmf.sharding import split_along


@functools.partial(
    jax.tree_util.register_dataclass,
    data_fields=["rows", "cols", "vals", "starts", "counts", "slots"],
    meta_fields=["block_rows", "mesh"],
)
@dataclasses.dataclass(frozen=True)
class RowTiles:
    """One side's ratings in fixed-length tiles (see the module docstring for shapes).

    ``counts`` is float32 (num_rows,): ratings per row; ``slots`` int32 (n,): where the k-th
    input triple sits in ``vals.ravel()``, so a sampler can write new values for the same
    ratings (None unless asked for); ``block_rows`` is static. With a ``mesh``,
    rows/cols/vals/starts have a leading device axis and blocks are per device.
    """

    rows: jax.Array
    cols: jax.Array
    vals: jax.Array
    starts: jax.Array
    counts: jax.Array
    block_rows: int
    mesh: Mesh | None = None
    slots: jax.Array | None = None

    @property
    def num_rows(self) -> int:
        return self.counts.shape[0]

    @property
    def num_blocks(self) -> int:
        return self.starts.shape[-1] - 1


class Encoded(NamedTuple):
    """Both sides of a training set: ``by_user`` (rows = users, cols = items) and ``by_item``."""

    by_user: RowTiles
    by_item: RowTiles


class Layout(NamedTuple):
    """Tile and block sizes: ``tile_len`` entries a tile, ``chunk_entries`` entries a chunk
    (one loop step's working set), ``block_rows`` rows a block (one batched solve)."""

    tile_len: int = 32
    chunk_entries: int = 1 << 14
    block_rows: int = 1 << 16


def layout_for_rank(rank: int) -> Layout:
    """Defaults measured on a 2-core CPU at ML-20M scale: 32-entry tiles, 64 from rank 32 on
    (a longer tile makes the batched Gram GEMM more efficient and halves the per-tile
    scatter of (k x k) blocks); blocks of row Grams of about 64 MiB."""
    k1 = rank + 1
    block_rows = int(np.clip(2**24 // (k1 * k1), 1 << 10, 1 << 16))
    return Layout(tile_len=32 if rank < 32 else 64, chunk_entries=1 << 14, block_rows=block_rows)


def row_tiles(
    rows: np.ndarray,
    cols: np.ndarray,
    vals: np.ndarray,
    num_rows: int,
    num_cols: int,
    layout: Layout | None = None,
    *,
    chunk: int | None = None,
    with_slots: bool = False,
    host: bool = False,
) -> RowTiles:
    """Tile the triples (rows[k], cols[k], vals[k]) by row; see the module docstring.

    ``chunk`` forces the tiles per chunk (default: ``chunk_entries / tile_len``, at most the
    largest block's tiles); ``with_slots`` keeps ``slots`` (4 bytes per rating); ``host``
    leaves every field a numpy array (for the caller to place). Triples already sorted by
    row (a partitioned folder's) are tiled without a sorted copy."""
    if num_rows < 1:
        raise ValueError("need at least one row")
    layout = layout or Layout()
    rows = np.asarray(rows, np.int32)
    cols = np.asarray(cols, np.int32)
    vals = np.asarray(vals, np.float32)
    if rows.size and (rows.min() < 0 or rows.max() >= num_rows):
        raise ValueError(f"row index out of range [0, {num_rows})")
    if cols.size and (cols.min() < 0 or cols.max() >= num_cols):
        raise ValueError(f"column index out of range [0, {num_cols})")
    tile_len = layout.tile_len
    block_rows = min(layout.block_rows, num_rows)  # small data: one block, no padding rows
    order = None  # rows already in order: the stable sort would be the identity
    if rows.size > 1 and not np.all(rows[1:] >= rows[:-1]):
        order = _stable_order(rows, num_rows)
        rows, cols, vals = rows[order], cols[order], vals[order]

    counts = np.bincount(rows, minlength=num_rows)
    tiles_per_row = -(-counts // tile_len)
    tiles_before = np.cumsum(tiles_per_row) - tiles_per_row  # in one global tile numbering
    # Each block's tiles are padded to whole chunks, so block b owns chunks starts[b]:starts[b+1].
    block = np.arange(num_rows) // block_rows
    block_first = tiles_before[::block_rows]
    tiles_per_block = np.add.reduceat(tiles_per_row, np.arange(0, num_rows, block_rows))
    if chunk is None:
        chunk = int(np.clip(layout.chunk_entries // tile_len, 1, max(1, tiles_per_block.max())))
    starts = np.concatenate([[0], np.cumsum(-(-tiles_per_block // chunk))])
    # Row r's first tile: its block's first chunk + the tiles of earlier rows in the block.
    shift = starts[:-1][block] * chunk - block_first[block]  # global tile number -> slot
    first_tile = tiles_before + shift
    total = max(1, int(starts[-1])) * chunk

    place = (lambda a: a) if host else jnp.asarray  # noqa: E731
    # Entry k lies pos_k = k - (its row's first entry) into its row's consecutive tiles, at
    # slot first_tile * tile_len + pos_k. int32 where the slots fit, built in place: the
    # host's peak is a few bytes an entry on top of the triples and the tiles.
    index = np.int32 if total * tile_len < 2**31 else np.int64
    flat = (np.cumsum(counts) - counts).astype(index)[rows]
    np.subtract(np.arange(rows.size, dtype=index), flat, out=flat)
    flat += (first_tile.astype(index) * tile_len)[rows]
    # Each field goes to the device as soon as it is built, so one host copy lives at a time.
    tile_cols = np.full(total * tile_len, num_cols, np.int32)
    tile_cols[flat] = cols
    tile_cols = place(tile_cols.reshape(-1, chunk, tile_len))
    tile_vals = np.zeros(total * tile_len, np.float32)
    tile_vals[flat] = vals
    tile_vals = place(tile_vals.reshape(-1, chunk, tile_len))
    slots = None
    if with_slots:
        if total * tile_len >= 2**31:
            raise ValueError(f"{rows.size:,} ratings tile past int32 slots; use several devices or a longer tile")
        slots = np.empty(rows.size, np.int32)
        slots[slice(None) if order is None else order] = flat
        slots = place(slots)
    del flat
    tile_rows = np.zeros(total, np.int32)  # padding tiles: row 0 of the block, all entries padded
    tile_rows[np.arange(tiles_before[-1] + tiles_per_row[-1]) + np.repeat(shift, tiles_per_row)] = np.repeat(
        np.arange(num_rows, dtype=np.int32) % block_rows, tiles_per_row
    )

    return RowTiles(
        rows=place(tile_rows.reshape(-1, chunk)),
        cols=tile_cols,
        vals=tile_vals,
        starts=place(starts.astype(np.int32)),
        counts=place(counts.astype(np.float32)),
        block_rows=block_rows,
        slots=slots,
    )


def tile_shape(counts: np.ndarray, layout: Layout | None = None, *, chunk: int | None = None) -> tuple[int, int]:
    """(chunk, num_chunks): the shape of `row_tiles`' ``rows`` for rows with these ``counts``
    (ratings per row), known without the ratings themselves."""
    layout = layout or Layout()
    counts = np.asarray(counts, np.int64)
    block_rows = min(layout.block_rows, counts.size)
    tiles_per_block = np.add.reduceat(-(-counts // layout.tile_len), np.arange(0, counts.size, block_rows))
    if chunk is None:
        chunk = int(np.clip(layout.chunk_entries // layout.tile_len, 1, max(1, tiles_per_block.max())))
    return chunk, max(1, int(np.sum(-(-tiles_per_block // chunk))))


def sharded_row_tiles(
    rows: ArrayLike,
    cols: ArrayLike,
    vals: ArrayLike,
    num_rows: int,
    num_cols: int,
    layout: Layout | None,
    mesh: Mesh,
    *,
    with_slots: bool = False,
) -> RowTiles:
    """`row_tiles` of D = mesh.size contiguous row ranges, padded to common shapes and stacked
    along a leading device axis that is split across ``mesh`` (see the module docstring);
    ``slots`` index the stacked (D, ...) ``vals`` (replicated, 4 bytes per rating)."""
    rows, cols, vals = np.asarray(rows, np.int32), np.asarray(cols, np.int32), np.asarray(vals, np.float32)
    d = mesh.size
    n_local = -(-num_rows // d)
    shard = rows // n_local
    parts = [(rows[shard == s] - s * n_local, cols[shard == s], vals[shard == s]) for s in range(d)]
    tile = functools.partial(row_tiles, with_slots=with_slots)
    tiles = [tile(*p, n_local, num_cols, layout) for p in parts]
    chunk = max(t.rows.shape[1] for t in tiles)
    tiles = [t if t.rows.shape[1] == chunk else tile(*p, n_local, num_cols, layout, chunk=chunk)
             for t, p in zip(tiles, parts, strict=True)]  # fmt: skip
    num_chunks = max(t.rows.shape[0] for t in tiles)
    slots = None
    if with_slots:  # device s's vals start at s * its padded size in the stacked array
        stride = num_chunks * chunk * tiles[0].vals.shape[2]
        if d * stride >= 2**31:
            raise ValueError(f"{rows.size:,} ratings tile past int32 slots; use fewer devices or a longer tile")
        slots = np.empty(rows.size, np.int32)
        for s in range(d):
            slots[shard == s] = s * stride + np.asarray(tiles[s].slots)
        slots = jnp.asarray(slots)

    def stack(
        field: str, fill: int
    ) -> np.ndarray:  # pad each device's chunks to num_chunks (never visited), then stack
        arrays = [np.asarray(getattr(t, field)) for t in tiles]
        pad = [np.pad(a, [(0, num_chunks - a.shape[0])] + [(0, 0)] * (a.ndim - 1), constant_values=fill)
               for a in arrays]  # fmt: skip
        return np.stack(pad)

    sharded = split_along(
        mesh,
        {
            "rows": stack("rows", 0),
            "cols": stack("cols", num_cols),
            "vals": stack("vals", 0),
            "starts": np.stack([np.asarray(t.starts) for t in tiles]),
        },
        axis=0,
    )
    counts = jnp.asarray(np.bincount(rows, minlength=num_rows).astype(np.float32))
    return RowTiles(**sharded, counts=counts, block_rows=tiles[0].block_rows, mesh=mesh, slots=slots)


def local_sharded_row_tiles(
    shards: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]],
    num_rows: int,
    num_cols: int,
    layout: Layout | None,
    mesh: Mesh,
    counts: np.ndarray,
) -> RowTiles:
    """`sharded_row_tiles` built from this process's shards alone (under ``jax.distributed``
    each process holds the ratings of its own devices' row ranges, never the others').

    shards: {mesh position s: (rows relative to s n_local, cols, vals)} for every device of
    ``mesh`` that this process owns; counts: (num_rows,) ratings of every row (all ranges).
    Every device's tile shape follows from ``counts`` (`tile_shape`), so each process pads
    its tiles to the common shapes `sharded_row_tiles` gives all the ratings, without asking
    the other processes; shards are tiled and placed one at a time."""
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    from probmf.sharding import AXIS

    d = mesh.size
    n_local = -(-num_rows // d)
    devices = list(mesh.devices.flat)
    mine = [s for s, dev in enumerate(devices) if dev.process_index == jax.process_index()]
    if not mine:
        raise ValueError(f"process {jax.process_index()} owns no device of the {d}-device mesh")
    if sorted(shards) != mine:
        raise ValueError(f"this process owns mesh positions {mine}, got shards for {sorted(shards)}")
    counts = np.asarray(counts, np.int64)
    per_device = np.pad(counts, (0, d * n_local - num_rows)).reshape(d, n_local)
    chunk = max(tile_shape(c, layout)[0] for c in per_device)
    num_chunks = max(tile_shape(c, layout, chunk=chunk)[1] for c in per_device)

    local: dict[str, list[jax.Array]] = {"rows": [], "cols": [], "vals": [], "starts": []}
    for s in mine:
        rows, cols, vals = shards[s]
        t = row_tiles(rows, cols, vals, n_local, num_cols, layout, chunk=chunk, host=True)
        if t.rows.shape[1] != chunk or t.rows.shape[0] > num_chunks:
            raise ValueError(f"the ratings of device {s}'s rows do not match their counts")
        for field, fill in (("rows", 0), ("cols", num_cols), ("vals", 0)):  # pad to num_chunks, never visited
            a = getattr(t, field)
            if a.shape[0] < num_chunks:
                a = np.pad(a, [(0, num_chunks - a.shape[0])] + [(0, 0)] * (a.ndim - 1), constant_values=fill)
            local[field].append(jax.device_put(a[None], devices[s]))
        local["starts"].append(jax.device_put(t.starts[None], devices[s]))
        block_rows = t.block_rows
        del t, a

    sharding = NamedSharding(mesh, P(AXIS))
    sharded = {field: jax.make_array_from_single_device_arrays((d,) + arrays[0].shape[1:], sharding, arrays)
               for field, arrays in local.items()}  # fmt: skip
    return RowTiles(**sharded, counts=jnp.asarray(counts.astype(np.float32)), block_rows=block_rows, mesh=mesh)


def _stable_order(rows: np.ndarray, num_rows: int) -> np.ndarray:
    """The permutation that sorts ``rows`` stably: scipy's COO -> CSR conversion is a
    counting sort in C, O(n + num_rows), about 3x faster than numpy's argsort at 20M."""
    n = rows.size
    coo = sp.coo_matrix((np.ones(n, np.bool_), (rows, np.arange(n, dtype=np.int64))), shape=(num_rows, n))
    return coo.tocsr().indices


def encode(
    ratings: Ratings, layout: Layout | None = None, mesh: Mesh | None = None, *, with_slots: bool = False
) -> Encoded:
    """Both row layouts of a training set, split across ``mesh``'s devices if given, with
    ``slots`` if asked. Every id must be known (no -1)."""
    if not np.all(ratings.known):
        raise ValueError(f"{ratings.source or 'training ratings'}: unknown (-1) ids cannot be trained on")
    if not np.all(np.isfinite(ratings.values)):
        raise ValueError(f"{ratings.source or 'training ratings'}: ratings must be finite")
    n, m = ratings.num_users, ratings.num_items
    if mesh is None:
        tile = functools.partial(row_tiles, with_slots=with_slots)
    else:
        tile = functools.partial(sharded_row_tiles, mesh=mesh, with_slots=with_slots)
    return Encoded(
        by_user=tile(ratings.users, ratings.items, ratings.values, n, m, layout),
        by_item=tile(ratings.items, ratings.users, ratings.values, m, n, layout),
    )


def encode_partitioned(part: PartitionedRatings, layout: Layout | None = None, mesh: Mesh | None = None) -> Encoded:
    """`encode` of a `probmf.data.partitioned.PartitionedRatings` folder, reading only the
    ratings of the rows this process's devices solve: with a ``mesh``, device s solves users
    (then items) [s n_local, (s + 1) n_local), n_local = ceil(N / D); without one, every row.
    Equal to `encode` of the same ratings in memory."""
    from probmf.data.partitioned import load_rows

    sides = {}
    for side in ("user", "item"):
        n, m = part.num_rows(side), part.num_rows("item" if side == "user" else "user")
        if mesh is None:
            r = load_rows(part, side, 0, n)
            sides[side] = row_tiles(r.rows, r.cols, r.vals, n, m, layout)
            del r  # before the other side is read
            continue
        n_local = -(-n // mesh.size)
        shards = {}
        for s, dev in enumerate(mesh.devices.flat):
            if dev.process_index == jax.process_index():
                lo, hi = min(s * n_local, n), min((s + 1) * n_local, n)
                r = load_rows(part, side, lo, hi)
                r.rows[:] -= lo  # relative to the device's range, in place
                shards[s] = r[:3]
                del r
        sides[side] = local_sharded_row_tiles(shards, n, m, layout, mesh, part.counts(side))
        del shards  # before the other side is read
    return Encoded(by_user=sides["user"], by_item=sides["item"])
