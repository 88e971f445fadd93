"""Tests for probmf.data.splits."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from probmf.data import (
    Ratings,
    kfold,
    per_user_split,
    per_user_temporal_split,
    random_split,
    temporal_split,
)


def tagged(users, items=None, timestamps=None) -> Ratings:
    """Ratings whose value is the row number, so every row can be traced through a split."""
    users = np.asarray(users)
    items = np.arange(users.size) % 7 if items is None else np.asarray(items)
    return Ratings.from_raw(users, items, np.arange(users.size, dtype=np.float32), timestamps)


def rows(r: Ratings) -> np.ndarray:
    return r.values.astype(np.int64)


def assert_partition(ratings: Ratings, train: Ratings, test: Ratings):
    """Every row in exactly one part, in input order, with the input's id maps."""
    both = np.concatenate([rows(train), rows(test)])
    np.testing.assert_array_equal(np.sort(both), np.arange(len(ratings)))
    assert np.all(np.diff(rows(train)) > 0) and np.all(np.diff(rows(test)) > 0)
    for part in (train, test):
        assert part.user_ids is ratings.user_ids and part.item_ids is ratings.item_ids
        np.testing.assert_array_equal(part.users, ratings.users[rows(part)])
        np.testing.assert_array_equal(part.items, ratings.items[rows(part)])


@pytest.fixture
def ratings():
    rng = np.random.default_rng(0)
    users = rng.integers(0, 30, 500)
    return tagged(users, rng.integers(0, 40, 500), rng.integers(0, 50, 500))


# ---- random ---------------------------------------------------------------------------------


def test_random_split(ratings):
    train, test = random_split(ratings, 0.2, seed=1)
    assert len(test) == 100 and len(train) == 400
    assert_partition(ratings, train, test)
    again = random_split(ratings, 0.2, seed=1)[1]
    np.testing.assert_array_equal(rows(again), rows(test))
    assert not np.array_equal(rows(random_split(ratings, 0.2, seed=2)[1]), rows(test))


def test_seed_is_required(ratings):
    with pytest.raises(TypeError):
        random_split(ratings, 0.2)
    with pytest.raises(TypeError):
        kfold(ratings, 5)


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1, 1.5])
def test_bad_fraction(ratings, fraction):
    with pytest.raises(ValueError, match="test_fraction"):
        random_split(ratings, fraction, seed=0)
    with pytest.raises(ValueError, match="test_fraction"):
        temporal_split(ratings, fraction)


# ---- k-fold ---------------------------------------------------------------------------------


def test_kfold_partitions(ratings):
    folds = kfold(ratings, 5, seed=3)
    assert len(folds) == 5
    tests = [rows(test) for _, test in folds]
    np.testing.assert_array_equal(np.sort(np.concatenate(tests)), np.arange(len(ratings)))
    assert {len(t) for t in tests} == {100}
    for train, test in folds:
        assert_partition(ratings, train, test)


def test_kfold_bad_k(ratings):
    for k in (1, 501, 2.5):
        with pytest.raises(ValueError, match="k must be"):
            kfold(ratings, k, seed=0)


# ---- per user -------------------------------------------------------------------------------


def test_per_user_split(ratings):
    train, test = per_user_split(ratings, 2, seed=5)
    assert_partition(ratings, train, test)
    counts = np.bincount(ratings.users, minlength=ratings.num_users)
    held = np.bincount(test.users, minlength=ratings.num_users)
    np.testing.assert_array_equal(held, np.where(counts > 2, 2, 0))
    # every test user keeps ratings in train
    assert set(test.users) <= set(train.users)


def test_per_user_split_skips_small_users():
    r = tagged([0, 0, 0, 1, 2, 2])
    train, test = per_user_split(r, 1, seed=0)
    np.testing.assert_array_equal(np.sort(test.raw_users()), [0, 2])
    with pytest.raises(ValueError, match="num_test"):
        per_user_split(r, 0, seed=0)


def test_per_user_split_is_random_within_user():
    r = tagged(np.zeros(50, int))
    picks = {int(rows(per_user_split(r, 1, seed=s)[1])[0]) for s in range(20)}
    assert len(picks) > 5


# ---- temporal -------------------------------------------------------------------------------


def test_temporal_split(ratings):
    train, test = temporal_split(ratings, 0.25)
    assert len(test) == 125
    assert_partition(ratings, train, test)
    assert train.timestamps.max() <= test.timestamps.min()


def test_temporal_ties_are_stable():
    r = tagged([0, 1, 2, 3, 4], timestamps=[5, 7, 7, 7, 1])
    train, test = temporal_split(r, 0.4)  # 2 of 5: the two later of the three 7s
    np.testing.assert_array_equal(rows(test), [2, 3])
    np.testing.assert_array_equal(rows(train), [0, 1, 4])


def test_temporal_needs_timestamps():
    r = tagged([0, 1, 2])
    with pytest.raises(ValueError, match="no timestamps"):
        temporal_split(r)
    with pytest.raises(ValueError, match="no timestamps"):
        per_user_temporal_split(r)


def test_per_user_temporal_split():
    r = tagged([0, 0, 0, 1, 1, 2], timestamps=[30, 10, 20, 5, 5, 1])
    train, test = per_user_temporal_split(r, 1)
    # user 0: latest is row 0 (t=30); user 1: tie at t=5, the later row (4) counts as later;
    # user 2 has a single rating and stays in train
    np.testing.assert_array_equal(rows(test), [0, 4])
    assert_partition(r, train, test)


def test_per_user_temporal_split_takes_the_latest(ratings):
    train, test = per_user_temporal_split(ratings, 3)
    assert_partition(ratings, train, test)
    for u in np.unique(test.users):
        assert train.timestamps[train.users == u].max() <= test.timestamps[test.users == u].min()


# ---- properties -----------------------------------------------------------------------------

ratings_strategy = st.integers(2, 80).flatmap(
    lambda n: st.tuples(
        st.lists(st.integers(0, 6), min_size=n, max_size=n),
        st.lists(st.integers(0, 20), min_size=n, max_size=n),
    )
)


@settings(max_examples=50, deadline=None)
@given(ratings_strategy, st.integers(0, 2**32 - 1), st.floats(0.05, 0.95))
def test_splits_never_lose_or_duplicate_rows(data, seed, fraction):
    users, timestamps = data
    r = tagged(users, timestamps=timestamps)
    assert_partition(r, *random_split(r, fraction, seed=seed))
    assert_partition(r, *per_user_split(r, 1 + seed % 3, seed=seed))
    assert_partition(r, *temporal_split(r, fraction))
    assert_partition(r, *per_user_temporal_split(r, 1 + seed % 3))


@settings(max_examples=50, deadline=None)
@given(ratings_strategy, st.integers(0, 2**32 - 1), st.integers(2, 6))
def test_kfold_tests_partition_the_data(data, seed, k):
    users, _ = data
    r = tagged(users)
    if k > len(r):
        return
    folds = kfold(r, k, seed=seed)
    counts = np.zeros(len(r), int)
    for train, test in folds:
        assert_partition(r, train, test)
        counts[rows(test)] += 1
    np.testing.assert_array_equal(counts, 1)
    sizes = [len(test) for _, test in folds]
    assert max(sizes) - min(sizes) <= 1
