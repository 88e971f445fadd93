"""Synthetic ratings drawn from the probmf model itself, with a known answer.

    r_ij = mu + b_i + c_j + w_i . u_j + eps_ij,   eps_ij ~ N(0, noise^2)
    w_i, u_j ~ N(0, factor_scale^2 I_rank),  b_i ~ N(0, user_bias_scale^2),  c_j ~ N(0, item_bias_scale^2)

Which pairs (i, j) are observed mimics MovieLens: Zipf-like item popularity, lognormal user
activity, no repeated (user, item) pair. Everything is host-side numpy, seeded by an int.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt

from probmf.data.ratings import IdMap, Ratings

__all__ = ["PRESETS", "SyntheticTruth", "synthetic_preset", "synthetic_ratings"]

_CHUNK = 1 << 20  # rows per chunk of the vectorised passes: bounds the temporaries (~40 MB each)
_FALLBACK_CELLS = 1 << 22  # user x item cells per chunk of the exact without-replacement fallback
_MAX_ROUNDS = 8  # redraw rounds for duplicate pairs before the exact fallback
_T0 = 946_684_800  # 2000-01-01T00:00:00Z, first timestamp
_SPAN = 3 * 365 * 86_400  # seconds the timestamps span (about 3 years) when there are enough ratings


class SyntheticTruth(NamedTuple):
    """The planted parameters (float64 numpy).

    The first five fields are those of `probmf.model.MFParams`, in order, so
    ``MFParams(*map(jnp.asarray, truth[:5]))`` is the planted model.

    Attributes:
      W: (num_users, rank) user factors w_i.
      U: (num_items, rank) item factors u_j.
      b: (num_users,) user biases.
      c: (num_items,) item biases.
      mu: global offset (a float).
      noise: sd of eps_ij (rating units).
    """

    W: np.ndarray
    U: np.ndarray
    b: np.ndarray
    c: np.ndarray
    mu: float
    noise: float

    def mean(self, users: npt.ArrayLike, items: npt.ArrayLike) -> np.ndarray:
        """Planted mean mu + b_i + c_j + w_i . u_j (float64 (n,)) of the pairs (users[k], items[k])."""
        users = np.asarray(users).reshape(-1)
        items = np.asarray(items).reshape(-1)
        out = np.empty(users.size, np.float64)
        for s in range(0, users.size, _CHUNK):
            u, i = users[s : s + _CHUNK], items[s : s + _CHUNK]
            dot = np.einsum("kr,kr->k", self.W[u], self.U[i])  # w_i . u_j, one gathered chunk at a time
            out[s : s + _CHUNK] = self.mu + self.b[u] + self.c[i] + dot
        return out


def synthetic_ratings(
    *,
    num_users: int,
    num_items: int,
    num_ratings: int,
    rank: int = 5,
    noise: float = 0.5,
    mu: float = 3.5,
    factor_scale: float | None = None,
    user_bias_scale: float = 0.5,
    item_bias_scale: float = 0.55,
    item_popularity_exponent: float = 0.9,
    user_activity_sigma: float = 1.0,
    min_per_user: int = 1,
    round_to_half_stars: bool = False,
    clip: tuple[float, float] | None = None,
    seed: int = 0,
) -> tuple[Ratings, SyntheticTruth]:
    """Draw ``num_ratings`` distinct (user, item) pairs and their ratings from the biased MF model.

        r_ij = mu + b_i + c_j + w_i . u_j + eps_ij,  eps_ij ~ N(0, noise^2)

    The defaults give MovieLens-like ratings: mean ~3.5, sd ~1 (Var = noise^2 + user_bias_scale^2
    + item_bias_scale^2 + rank * factor_scale^4 ~ 1.05), most of the mass in 1..5.

    Which pairs are observed:
      * item popularity p_j proportional to 1 / rank_j ** item_popularity_exponent, where rank_j
        is the position of j in a random permutation (the item index is not the popularity rank);
      * user activity n_i = min_per_user + a multinomial share of the rest with lognormal(0,
        user_activity_sigma) weights, capped at num_items, so sum_i n_i == num_ratings exactly;
      * user i's items are drawn from p without replacement (no duplicate pair).

    Args:
      num_users: size of the users' identity id map (a user or item may end up unrated only
        if ``min_per_user == 0`` or it is far in the popularity tail).
      num_items: size of the items' identity id map.
      num_ratings: exact number of ratings, in [num_users * min_per_user, num_users * num_items].
      rank: K, the length of w_i and u_j.
      noise: sd of eps (rating units).
      mu: global offset.
      factor_scale: sd of each entry of w_i and u_j; by default ``(0.25 / rank) ** 0.25``, so
        Var(w_i . u_j) = rank * factor_scale^4 = 0.25, the default noise variance.
      user_bias_scale: sd of b_i.
      item_bias_scale: sd of c_j.
      item_popularity_exponent: Zipf exponent a (0 = uniform popularity).
      user_activity_sigma: sigma of the lognormal activity weights (0 = equal activity).
      min_per_user: every user has at least this many ratings.
      round_to_half_stars: snap ratings to the grid 0.5, 1.0, ..., 5.0 (as MovieLens 20M).
      clip: optional (low, high) bounds applied last.
      seed: seed of `numpy.random.default_rng`; the same arguments and seed give the same data.

    Returns:
      ``(ratings, truth)``: `Ratings` with identity id maps, rows in chronological order and
      strictly increasing int64 timestamps (seconds from 2000-01-01); `SyntheticTruth` with the
      planted parameters (``truth.mean(users, items)`` is the noiseless rating).

    Example:
      >>> ratings, truth = synthetic_ratings(num_users=60, num_items=40, num_ratings=800, seed=1)
      >>> len(ratings), truth.W.shape
      (800, (60, 5))
    """
    num_users, num_items, num_ratings = int(num_users), int(num_items), int(num_ratings)
    rank, min_per_user = int(rank), int(min_per_user)
    if num_users < 1 or num_items < 1 or rank < 0 or min_per_user < 0:
        raise ValueError(
            f"need num_users >= 1, num_items >= 1, rank >= 0, min_per_user >= 0; got {num_users}, "
            f"{num_items}, {rank}, {min_per_user}"
        )
    if min_per_user > num_items:
        raise ValueError(f"min_per_user={min_per_user} exceeds num_items={num_items}")
    lo_n, hi_n = num_users * min_per_user, num_users * num_items
    if not lo_n <= num_ratings <= hi_n:
        raise ValueError(
            f"num_ratings={num_ratings} is outside [{lo_n}, {hi_n}] (num_users * min_per_user, "
            "num_users * num_items) for distinct pairs"
        )
    if min(noise, user_bias_scale, item_bias_scale, user_activity_sigma, item_popularity_exponent) < 0:
        raise ValueError(
            "noise, user_bias_scale, item_bias_scale, user_activity_sigma and item_popularity_exponent must be >= 0"
        )
    if clip is not None and not clip[0] <= clip[1]:
        raise ValueError(f"clip must be (low, high) with low <= high, got {clip}")
    if factor_scale is None:
        factor_scale = (0.25 / max(rank, 1)) ** 0.25

    # Independent streams per purpose: the planted parameters for a seed do not change with
    # num_ratings or the popularity options, and the pairs do not change with the noise.
    rng_truth, rng_users, rng_items, rng_noise, rng_time = (
        np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(5)
    )
    truth = SyntheticTruth(
        W=rng_truth.normal(0.0, factor_scale, (num_users, rank)),
        U=rng_truth.normal(0.0, factor_scale, (num_items, rank)),
        b=rng_truth.normal(0.0, user_bias_scale, num_users),
        c=rng_truth.normal(0.0, item_bias_scale, num_items),
        mu=float(mu),
        noise=float(noise),
    )

    counts = _user_activity(rng_users, num_users, num_items, num_ratings, min_per_user, user_activity_sigma)
    # log p_j = -a log(rank_j), ranks a random permutation of 1..num_items; kept in logs so a
    # steep exponent cannot underflow the tail to p_j = 0 in the exact fallback.
    log_popularity = np.empty(num_items, np.float64)
    log_popularity[rng_items.permutation(num_items)] = -float(item_popularity_exponent) * np.log(
        np.arange(1, num_items + 1, dtype=np.float64)
    )
    keys = _distinct_pairs(rng_items, counts, log_popularity)
    users = (keys // num_items).astype(np.int32)
    items = (keys % num_items).astype(np.int32)
    del keys

    values = np.empty(num_ratings, np.float32)
    for s in range(0, num_ratings, _CHUNK):
        u, i = users[s : s + _CHUNK], items[s : s + _CHUNK]
        values[s : s + _CHUNK] = truth.mean(u, i) + noise * rng_noise.standard_normal(u.size)
    if round_to_half_stars:
        # Nearest point of the MovieLens 20M grid {0.5, 1.0, ..., 5.0}.
        np.clip(np.round(values * 2.0) / 2.0, 0.5, 5.0, out=values)
    if clip is not None:
        np.clip(values, clip[0], clip[1], out=values)

    # A ratings log: rows in a random order, stamped with strictly increasing times
    # (geometric gaps >= 1 s) so temporal splits have no ties.
    order = rng_time.permutation(num_ratings)
    users, items, values = users[order], items[order], values[order]
    del order
    mean_gap = max(1.0, _SPAN / max(num_ratings, 1))
    timestamps = rng_time.geometric(1.0 / mean_gap, num_ratings)
    np.cumsum(timestamps, out=timestamps)
    timestamps += _T0

    source = (
        f"synthetic biased MF: {num_users} users x {num_items} items, {num_ratings} ratings, "
        f"rank {rank}, noise {noise:g}, seed {seed}"
    )
    ratings = Ratings(users, items, values, IdMap.identity(num_users), IdMap.identity(num_items), timestamps, source)
    return ratings, truth


def _user_activity(
    rng: np.random.Generator, num_users: int, num_items: int, num_ratings: int, min_per_user: int, sigma: float
) -> np.ndarray:
    """int64 (num_users,) counts n_i with min_per_user <= n_i <= num_items and sum == num_ratings.

    n_i = min_per_user + Multinomial(rest, weights), weights ~ lognormal(0, sigma); what a full
    user cannot take is dealt again among the users with room (each pass fills at least one).
    """
    counts = np.full(num_users, min_per_user, np.int64)
    weights = rng.lognormal(0.0, sigma, num_users)
    rest = num_ratings - int(counts.sum())
    while rest > 0:
        room = num_items - counts
        w = np.where(room > 0, weights, 0.0)
        counts += np.minimum(rng.multinomial(rest, w / w.sum()), room)
        rest = num_ratings - int(counts.sum())
    return counts


def _draw_items(rng: np.random.Generator, cdf: np.ndarray, size: int) -> np.ndarray:
    """int64 (size,) items drawn i.i.d. from p = diff(cdf) by inverse CDF (binary search)."""
    out = np.empty(size, np.int64)
    for s in range(0, size, _CHUNK):
        m = min(_CHUNK, size - s)
        # side="right": u in [cdf[j-1], cdf[j]) -> j; the min guards u rounding up to cdf[-1].
        j = np.searchsorted(cdf, rng.random(m) * cdf[-1], side="right")
        np.minimum(j, cdf.size - 1, out=out[s : s + m])
    return out


def _segments(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """int64 positions of the concatenated ranges [starts[k], starts[k] + lengths[k])."""
    total = int(lengths.sum())
    ends = np.cumsum(lengths)
    return np.arange(total, dtype=np.int64) + np.repeat(starts - (ends - lengths), lengths)


def _distinct_pairs(rng: np.random.Generator, counts: np.ndarray, log_popularity: np.ndarray) -> np.ndarray:
    """Sorted int64 keys user * num_items + item: counts[i] distinct items of user i, drawn from p
    (p_j proportional to exp(log_popularity[j])).

    Every slot draws an item from p; after sorting the keys a duplicate sits next to its twin, and
    only those slots are drawn again, re-sorting only the segments of users that had one. A user
    still short after a few rounds (one who rates a large part of the catalogue, whose missing
    items are in the thin tail of p) gets the rest drawn exactly by Gumbel top-k.
    """
    num_items = log_popularity.size
    cdf = np.cumsum(np.exp(log_popularity - log_popularity.max()))
    offsets = np.cumsum(counts) - counts
    keys = np.repeat(np.arange(counts.size, dtype=np.int64) * num_items, counts)
    keys += _draw_items(rng, cdf, keys.size)
    keys.sort()  # user-major: each user's slots stay in its segment, items sorted within it

    sub = None  # positions of the segments still being redrawn (None: all of them, k is keys)
    k = keys
    for _ in range(_MAX_ROUNDS):
        dup = np.flatnonzero(k[1:] == k[:-1]) + 1
        if dup.size == 0:
            return keys
        k[dup] += _draw_items(rng, cdf, dup.size) - k[dup] % num_items
        if sub is not None:
            keys[sub] = k
        bad = np.unique(k[dup] // num_items)
        sub = _segments(offsets[bad], counts[bad])
        k = keys[sub]
        k.sort()
        keys[sub] = k
    dup = np.flatnonzero(k[1:] == k[:-1]) + 1
    if dup.size:
        bad = np.unique(k[dup] // num_items)
        sub = _segments(offsets[bad], counts[bad])
        keys[sub] = _fill_without_replacement(rng, keys[sub], bad, counts[bad], log_popularity)
    return keys


def _fill_without_replacement(
    rng: np.random.Generator, k: np.ndarray, users: np.ndarray, counts: np.ndarray, logp: np.ndarray
) -> np.ndarray:
    """Complete the sorted keys ``k`` of ``users`` (sorted) to ``counts`` distinct items each.

    The missing items of user i are a draw without replacement from p restricted to the items
    i lacks: the top-d of log p_j + Gumbel over those items (Efraimidis-Spirakis / Gumbel top-k).
    """
    num_items = logp.size
    first = np.ones(k.size, bool)
    first[1:] = k[1:] != k[:-1]
    owned = k[first]
    row = np.searchsorted(users, owned // num_items)  # row of each owned key in ``users``
    need = counts - np.bincount(row, minlength=users.size)
    new = []
    step = max(1, _FALLBACK_CELLS // num_items)
    for s in range(0, users.size, step):
        e = min(s + step, users.size)
        d = int(need[s:e].max())
        if d == 0:
            continue
        g = logp + rng.gumbel(size=(e - s, num_items))
        a, z = np.searchsorted(row, [s, e])
        g[row[a:z] - s, owned[a:z] % num_items] = -np.inf
        top = np.argpartition(g, num_items - d, axis=1)[:, num_items - d :]
        top = np.take_along_axis(top, np.argsort(-np.take_along_axis(g, top, 1), axis=1), 1)
        take = np.arange(d) < need[s:e, None]
        r = np.broadcast_to(np.arange(s, e)[:, None], top.shape)[take]
        new.append(users[r] * num_items + top[take])
    out = np.concatenate([owned, *new])
    out.sort()
    return out


PRESETS: dict[str, dict] = {
    # MovieLens 100K: 943 users x 1682 items, 100,000 ratings, every user >= 20, stars 1..5.
    "ml100k": dict(num_users=943, num_items=1682, num_ratings=100_000, min_per_user=20, clip=(1.0, 5.0)),
    # MovieLens 1M: 6,040 users x 3,706 items, 1,000,209 ratings, every user >= 20, stars 1..5.
    "ml1m": dict(num_users=6_040, num_items=3_706, num_ratings=1_000_209, min_per_user=20, clip=(1.0, 5.0)),
    # MovieLens 20M: 138,493 users x 26,744 items, 20,000,263 ratings, >= 20 each, half stars.
    "ml20m": dict(
        num_users=138_493,
        num_items=26_744,
        num_ratings=20_000_263,
        min_per_user=20,
        round_to_half_stars=True,
        user_activity_sigma=1.1,
    ),
    # Small enough for unit tests.
    "tiny": dict(num_users=60, num_items=40, num_ratings=800, min_per_user=5),
}


def synthetic_preset(name: str, *, seed: int = 0, **overrides: Any) -> tuple[Ratings, SyntheticTruth]:
    """`synthetic_ratings` with the sizes of a MovieLens release (see `PRESETS`).

    Args:
      name: one of ``PRESETS`` ("ml100k", "ml1m", "ml20m", "tiny").
      seed: seed of the generator.
      **overrides: any keyword of `synthetic_ratings`, replacing the preset's value.

    Example:
      >>> ratings, truth = synthetic_preset("tiny", noise=0.3)
      >>> ratings.num_users, ratings.num_items, len(ratings)
      (60, 40, 800)
    """
    if name not in PRESETS:
        raise ValueError(f"unknown synthetic preset {name!r}; known: {sorted(PRESETS)}")
    ratings, truth = synthetic_ratings(**{**PRESETS[name], **overrides, "seed": seed})
    return dataclasses.replace(ratings, source=f"synthetic preset {name!r}: {ratings.source}"), truth
