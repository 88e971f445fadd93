"""Train / test splits of a `Ratings` set (host-side numpy).

Every split returns ``(train, test)`` views made with `Ratings.take`: both keep the input's id
maps, so a user or item seen only in the test set keeps its index (it simply has no training
ratings). Rows keep their input order within each part. Random splits take an explicit integer
``seed`` for `numpy.random.default_rng`.
"""

from __future__ import annotations

import numpy as np

from probmf.data.ratings import Ratings

__all__ = [
    "kfold",
    "per_user_split",
    "per_user_temporal_split",
    "random_split",
    "temporal_split",
]


def _pair(ratings: Ratings, test_mask: np.ndarray) -> tuple[Ratings, Ratings]:
    return ratings.take(np.flatnonzero(~test_mask)), ratings.take(np.flatnonzero(test_mask))


def _num_test(n: int, test_fraction: float) -> int:
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction!r}")
    return int(round(test_fraction * n))


def random_split(ratings: Ratings, test_fraction: float = 0.2, *, seed: int) -> tuple[Ratings, Ratings]:
    """Hold out ``round(test_fraction * n)`` ratings chosen uniformly at random.

    Returns:
      (train, test) with ``len(test) == round(test_fraction * len(ratings))``.
    """
    n = len(ratings)
    n_test = _num_test(n, test_fraction)
    rng = np.random.default_rng(seed)
    test = np.zeros(n, bool)
    test[rng.permutation(n)[:n_test]] = True
    return _pair(ratings, test)


def kfold(ratings: Ratings, k: int = 5, *, seed: int) -> list[tuple[Ratings, Ratings]]:
    """``k`` (train, test) pairs whose test sets partition the ratings (sizes differ by <= 1)."""
    n = len(ratings)
    if int(k) != k or not 2 <= k <= n:
        raise ValueError(f"k must be an integer in [2, number of ratings = {n}], got {k!r}")
    fold = np.empty(n, np.int64)
    fold[np.random.default_rng(seed).permutation(n)] = np.arange(n) % k
    return [_pair(ratings, fold == j) for j in range(k)]


def _rank_within_user(users: np.ndarray, order: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For rows visited in ``order`` (grouped by user), each row's 0-based rank within its
    user and its user's number of ratings."""
    sorted_users = users[order]
    starts = np.r_[True, sorted_users[1:] != sorted_users[:-1]]
    group = np.cumsum(starts) - 1
    first = np.flatnonzero(starts)
    rank = np.empty(users.size, np.int64)
    rank[order] = np.arange(users.size) - first[group]
    count = np.empty(users.size, np.int64)
    count[order] = np.diff(np.r_[first, users.size])[group]
    return rank, count


def _check_num_test(num_test: int) -> int:
    if int(num_test) != num_test or num_test < 1:
        raise ValueError(f"num_test must be a positive integer, got {num_test!r}")
    return int(num_test)


def per_user_split(ratings: Ratings, num_test: int = 1, *, seed: int) -> tuple[Ratings, Ratings]:
    """Hold out ``num_test`` random ratings of every user who has more than ``num_test``.

    Users with ``num_test`` ratings or fewer stay entirely in train, so every test user also
    has training ratings.
    """
    num_test = _check_num_test(num_test)
    n = len(ratings)
    key = np.random.default_rng(seed).random(n)
    order = np.lexsort((key, ratings.users))  # by user, random order within a user
    rank, count = _rank_within_user(ratings.users, order)
    return _pair(ratings, (rank < num_test) & (count > num_test))


def _require_timestamps(ratings: Ratings) -> np.ndarray:
    if ratings.timestamps is None:
        raise ValueError(f"{ratings.source or 'ratings'} has no timestamps; a temporal split needs them")
    return ratings.timestamps


def temporal_split(ratings: Ratings, test_fraction: float = 0.2) -> tuple[Ratings, Ratings]:
    """Hold out the latest ``round(test_fraction * n)`` ratings (one global time cut).

    Ratings with equal timestamps keep their input order, so among ties the later rows go to
    the test set; the split is deterministic.
    """
    ts = _require_timestamps(ratings)
    n = len(ratings)
    n_test = _num_test(n, test_fraction)
    order = np.argsort(ts, kind="stable")
    test = np.zeros(n, bool)
    test[order[n - n_test :]] = True
    return _pair(ratings, test)


def per_user_temporal_split(ratings: Ratings, num_test: int = 1) -> tuple[Ratings, Ratings]:
    """Hold out the latest ``num_test`` ratings of every user who has more than ``num_test``.

    Ties in time keep input order (the later row counts as later).
    """
    num_test = _check_num_test(num_test)
    ts = _require_timestamps(ratings)
    n = len(ratings)
    # Latest first within each user: sort by user, then by time and row, both descending.
    order = np.lexsort((-np.arange(n), -ts, ratings.users))
    rank, count = _rank_within_user(ratings.users, order)
    return _pair(ratings, (rank < num_test) & (count > num_test))
