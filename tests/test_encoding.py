"""The tiled row layout holds exactly the ratings, whatever the tile, chunk and block sizes."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from probmf.encoding import Layout, layout_for_rank, row_tiles, tile_shape


def _dense_from_tiles(t, num_rows, num_cols):
    rows, cols, vals, starts = (np.asarray(a) for a in (t.rows, t.cols, t.vals, t.starts))
    dense = np.zeros((num_rows, num_cols + 1))
    for block in range(len(starts) - 1):
        chunk = slice(starts[block], starts[block + 1])
        r = block * t.block_rows + np.broadcast_to(rows[chunk][..., None], cols[chunk].shape)
        np.add.at(dense, (r.ravel(), cols[chunk].ravel()), vals[chunk].ravel())
    return dense


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(1, 300),
    num_rows=st.integers(1, 40),
    num_cols=st.integers(1, 15),
    tile_len=st.integers(1, 9),
    chunk_entries=st.integers(1, 64),
    block_rows=st.integers(1, 50),
    seed=st.integers(0, 2**16),
)
def test_tiles_reconstruct_the_ratings(n, num_rows, num_cols, tile_len, chunk_entries, block_rows, seed):
    rng = np.random.default_rng(seed)
    rows, cols = rng.integers(0, num_rows, n), rng.integers(0, num_cols, n)
    vals = rng.standard_normal(n).astype(np.float32)
    layout = Layout(tile_len, chunk_entries, block_rows)
    t = row_tiles(rows, cols, vals, num_rows, num_cols, layout)
    ref = np.zeros((num_rows, num_cols + 1))
    np.add.at(ref, (rows, cols), vals)
    dense = _dense_from_tiles(t, num_rows, num_cols)
    np.testing.assert_allclose(dense, ref, atol=1e-5)  # padding column num_cols stays 0
    np.testing.assert_array_equal(np.asarray(t.counts), np.bincount(rows, minlength=num_rows))
    assert np.all(np.asarray(t.rows) < t.block_rows)
    # The shape follows from the counts alone (how a process pads tiles it never sees).
    counts = np.bincount(rows, minlength=num_rows)
    assert tile_shape(counts, layout) == t.rows.shape[::-1]
    assert tile_shape(counts, layout, chunk=3)[1] == row_tiles(rows, cols, vals, num_rows, num_cols, layout,
                                                                 chunk=3).rows.shape[0]  # fmt: skip
    # Triples already sorted by row (stably) skip the sort and give the same tiles.
    order = np.argsort(rows, kind="stable")
    s = row_tiles(rows[order], cols[order], vals[order], num_rows, num_cols, layout, host=True)
    for field in ("rows", "cols", "vals", "starts", "counts"):
        np.testing.assert_array_equal(getattr(s, field), np.asarray(getattr(t, field)), err_msg=field)


def test_out_of_range_indices_are_rejected():
    with pytest.raises(ValueError, match="column index"):
        row_tiles(np.array([0]), np.array([5]), np.array([1.0]), 1, 5)
    with pytest.raises(ValueError, match="row index"):
        row_tiles(np.array([-1]), np.array([0]), np.array([1.0]), 1, 5)


def teslayout_for_rank_bounds_block_memory():
    for rank in (0, 10, 64, 200):
        lay = layout_for_rank(rank)
        assert lay.block_rows * (rank + 1) ** 2 * 4 <= 2**26 or lay.block_rows == 1 << 10
