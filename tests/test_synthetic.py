"""Synthetic ratings: exact sizes, distinct pairs, determinism and the planted statistics."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from probmf.data import synthetic
from probmf.data.ratings import IdMap, Ratings
from probmf.data.synthetic import PRESETS, SyntheticTruth, synthetic_preset, synthetic_ratings


def _check_valid(ratings: Ratings, *, num_users, num_items, num_ratings, min_per_user):
    """Exact count, dtypes, identity maps, no duplicate pair, activity bounds, increasing times."""
    assert isinstance(ratings, Ratings)
    assert len(ratings) == num_ratings
    assert (ratings.num_users, ratings.num_items) == (num_users, num_items)
    assert ratings.user_ids == IdMap.identity(num_users)
    assert ratings.item_ids == IdMap.identity(num_items)
    assert ratings.users.dtype == np.int32 and ratings.items.dtype == np.int32
    assert ratings.values.dtype == np.float32 and ratings.timestamps.dtype == np.int64
    assert np.all(np.isfinite(ratings.values))
    key = ratings.users.astype(np.int64) * num_items + ratings.items
    assert np.unique(key).size == num_ratings, "duplicate (user, item) pairs"
    per_user = np.bincount(ratings.users, minlength=num_users)
    assert per_user.min() >= min_per_user
    assert per_user.max() <= num_items
    assert np.all(np.diff(ratings.timestamps) > 0)


@pytest.fixture(scope="module")
def ml100k():
    return synthetic_preset("ml100k", seed=3)


@pytest.fixture(scope="module")
def unclipped():
    """ml100k sizes, ratings left continuous (no clip) so the model holds exactly."""
    return synthetic_preset("ml100k", seed=4, clip=None)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(num_users=60, num_items=40, num_ratings=800),
        dict(num_users=50, num_items=30, num_ratings=1500),  # the full matrix
        dict(num_users=50, num_items=30, num_ratings=1400, min_per_user=25),
        dict(num_users=200, num_items=100, num_ratings=15_000, item_popularity_exponent=2.5),
        dict(num_users=300, num_items=500, num_ratings=20_000, item_popularity_exponent=0.0),
        dict(num_users=100, num_items=80, num_ratings=3000, min_per_user=0, user_activity_sigma=3.0),
        dict(num_users=1, num_items=1, num_ratings=1),
        dict(num_users=5, num_items=7, num_ratings=0, min_per_user=0),
    ],
)
def test_exact_count_distinct_pairs_and_activity_bounds(kwargs):
    ratings, truth = synthetic_ratings(**kwargs, seed=1)
    _check_valid(
        ratings,
        num_users=kwargs["num_users"],
        num_items=kwargs["num_items"],
        num_ratings=kwargs["num_ratings"],
        min_per_user=kwargs.get("min_per_user", 1),
    )
    assert truth.W.shape == (kwargs["num_users"], 5) and truth.U.shape == (kwargs["num_items"], 5)


@settings(max_examples=40, deadline=None)
@given(
    num_users=st.integers(1, 40),
    num_items=st.integers(1, 40),
    fill=st.floats(0.0, 1.0),
    min_frac=st.floats(0.0, 1.0),
    exponent=st.floats(0.0, 4.0),
    sigma=st.floats(0.0, 3.0),
    seed=st.integers(0, 2**31),
)
def test_any_feasible_request_is_met_exactly(num_users, num_items, fill, min_frac, exponent, sigma, seed):
    min_per_user = int(min_frac * num_items)
    lo, hi = num_users * min_per_user, num_users * num_items
    num_ratings = lo + int(fill * (hi - lo))
    ratings, _ = synthetic_ratings(
        num_users=num_users,
        num_items=num_items,
        num_ratings=num_ratings,
        min_per_user=min_per_user,
        item_popularity_exponent=exponent,
        user_activity_sigma=sigma,
        seed=seed,
    )
    _check_valid(ratings, num_users=num_users, num_items=num_items, num_ratings=num_ratings, min_per_user=min_per_user)


def test_exact_fallback_alone_gives_distinct_pairs(monkeypatch):
    # No redraw round and tiny chunks: every user goes through the Gumbel top-k fallback.
    monkeypatch.setattr(synthetic, "_MAX_ROUNDS", 0)
    monkeypatch.setattr(synthetic, "_FALLBACK_CELLS", 500)
    ratings, _ = synthetic_ratings(num_users=120, num_items=90, num_ratings=6000, min_per_user=10, seed=2)
    _check_valid(ratings, num_users=120, num_items=90, num_ratings=6000, min_per_user=10)


def test_same_seed_same_data_other_seed_other_data():
    kwargs = dict(num_users=80, num_items=50, num_ratings=1200)
    (r1, t1), (r2, t2) = synthetic_ratings(**kwargs, seed=7), synthetic_ratings(**kwargs, seed=7)
    r3, t3 = synthetic_ratings(**kwargs, seed=8)
    for name in ("users", "items", "values", "timestamps"):
        np.testing.assert_array_equal(getattr(r1, name), getattr(r2, name))
    for a, b in zip(t1, t2, strict=True):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(r1.values, r3.values)
    assert not np.array_equal(r1.items, r3.items)
    assert not np.array_equal(t1.W, t3.W)


def test_planted_parameters_do_not_depend_on_the_sample_size():
    _, small = synthetic_ratings(num_users=30, num_items=20, num_ratings=100, seed=5)
    _, large = synthetic_ratings(num_users=30, num_items=20, num_ratings=400, seed=5)
    np.testing.assert_array_equal(small.W, large.W)
    np.testing.assert_array_equal(small.c, large.c)


def test_truth_holds_the_planted_parameters():
    ratings, truth = synthetic_ratings(num_users=30, num_items=20, num_ratings=200, rank=3, mu=2.0, noise=0.25, seed=0)
    assert isinstance(truth, SyntheticTruth)
    assert truth.W.shape == (30, 3) and truth.U.shape == (20, 3)
    assert truth.b.shape == (30,) and truth.c.shape == (20,)
    assert truth.mu == 2.0 and truth.noise == 0.25
    u, i = ratings.users[:5], ratings.items[:5]
    expected = truth.mu + truth.b[u] + truth.c[i] + np.sum(truth.W[u] * truth.U[i], axis=1)
    np.testing.assert_allclose(truth.mean(u, i), expected, rtol=1e-12)


def test_noise_free_ratings_equal_the_planted_mean():
    ratings, truth = synthetic_ratings(num_users=40, num_items=30, num_ratings=600, noise=0.0, seed=0)
    np.testing.assert_allclose(ratings.values, truth.mean(ratings.users, ratings.items), rtol=1e-6)


def test_residual_sd_is_the_noise(unclipped):
    ratings, truth = unclipped
    resid = ratings.values - truth.mean(ratings.users, ratings.items)
    n = resid.size
    # sd(mean) = noise / sqrt(n) ~ 0.0016 and relative sd(std) ~ 1 / sqrt(2 n) ~ 0.0022: these
    # bounds are over 8 standard errors wide.
    assert abs(resid.mean()) < 8 * truth.noise / np.sqrt(n)
    assert resid.std() == pytest.approx(truth.noise, rel=8 / np.sqrt(2 * n))


def test_ratings_look_like_movielens(ml100k, unclipped):
    ratings, _ = unclipped
    assert 3.3 < ratings.values.mean() < 3.7
    assert 0.85 < ratings.values.std() < 1.2
    assert np.mean((ratings.values >= 1) & (ratings.values <= 5)) > 0.9
    clipped, _ = ml100k
    assert clipped.values.min() == 1.0 and clipped.values.max() == 5.0
    assert 3.3 < clipped.values.mean() < 3.7


def test_signal_variance_is_comparable_to_the_noise():
    _, truth = synthetic_ratings(num_users=4000, num_items=4000, num_ratings=4000, seed=0)
    dot = np.sum(truth.W * truth.U, axis=1)  # w_i . u_i over independent pairs
    # Var(w . u) = rank * factor_scale^4 = 0.25 by default; 4000 draws estimate it within ~5%.
    assert 0.2 < dot.var() < 0.3


def test_item_popularity_is_skewed_and_not_the_item_index(ml100k):
    ratings, _ = ml100k
    counts = np.sort(np.bincount(ratings.items, minlength=ratings.num_items))[::-1]
    assert counts[: ratings.num_items // 10].sum() / counts.sum() > 0.3
    per_item = np.bincount(ratings.items, minlength=ratings.num_items)
    # A random permutation decides the popularity rank: no trend along the item index
    # (the correlation of 1682 independent pairs has sd ~0.025).
    assert abs(np.corrcoef(np.arange(ratings.num_items), per_item)[0, 1]) < 0.2


def test_uniform_popularity_is_not_skewed():
    ratings, _ = synthetic_ratings(
        num_users=500, num_items=400, num_ratings=40_000, item_popularity_exponent=0.0, seed=0
    )
    counts = np.sort(np.bincount(ratings.items, minlength=400))[::-1]
    assert counts[:40].sum() / counts.sum() < 0.15


def test_user_activity_is_heavy_tailed(ml100k):
    ratings, _ = ml100k
    per_user = np.bincount(ratings.users, minlength=ratings.num_users)
    assert per_user.min() >= 20
    assert per_user.max() > 5 * np.median(per_user)


def test_half_star_rounding():
    ratings, _ = synthetic_ratings(
        num_users=100, num_items=60, num_ratings=3000, noise=1.5, round_to_half_stars=True, seed=0
    )
    doubled = ratings.values * 2
    np.testing.assert_array_equal(doubled, np.round(doubled))
    assert ratings.values.min() == 0.5 and ratings.values.max() == 5.0


def test_clip_bounds_the_ratings():
    ratings, _ = synthetic_ratings(num_users=100, num_items=60, num_ratings=3000, noise=1.0, clip=(2, 4), seed=0)
    assert ratings.values.min() == 2.0 and ratings.values.max() == 4.0
    assert 0 < np.mean((ratings.values > 2) & (ratings.values < 4)) < 1


@pytest.mark.parametrize(
    "name, num_users, num_items, num_ratings, min_per_user",
    [("tiny", 60, 40, 800, 5), ("ml100k", 943, 1682, 100_000, 20), ("ml1m", 6040, 3706, 1_000_209, 20)],
)
def test_presets_have_the_movielens_sizes(name, num_users, num_items, num_ratings, min_per_user):
    ratings, truth = synthetic_preset(name, seed=0)
    _check_valid(ratings, num_users=num_users, num_items=num_items, num_ratings=num_ratings, min_per_user=min_per_user)
    assert name in ratings.source
    if name != "tiny":
        assert ratings.values.min() >= 1.0 and ratings.values.max() <= 5.0


def test_ml20m_preset_sizes():
    # Generating it takes seconds and ~1 GB: only its recipe is checked here.
    expected = dict(num_users=138_493, num_items=26_744, num_ratings=20_000_263, min_per_user=20)
    assert {k: PRESETS["ml20m"][k] for k in expected} == expected


def test_preset_overrides_and_unknown_name():
    ratings, truth = synthetic_preset("tiny", seed=1, noise=0.1, rank=2)
    assert truth.noise == 0.1 and truth.W.shape == (60, 2)
    with pytest.raises(ValueError, match="unknown synthetic preset"):
        synthetic_preset("ml-100k")


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(num_users=10, num_items=5, num_ratings=51),  # more than the distinct pairs
        dict(num_users=10, num_items=5, num_ratings=19, min_per_user=2),  # fewer than the minimum
        dict(num_users=10, num_items=5, num_ratings=50, min_per_user=6),
        dict(num_users=0, num_items=5, num_ratings=0),
        dict(num_users=10, num_items=5, num_ratings=20, noise=-1.0),
        dict(num_users=10, num_items=5, num_ratings=20, clip=(5, 1)),
    ],
)
def test_infeasible_requests_are_rejected(kwargs):
    with pytest.raises(ValueError):
        synthetic_ratings(**kwargs)
