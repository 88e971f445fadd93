"""ALS against mathematics: exact row minimisers, autodiff, ridge regression, monotonicity."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from probmf.data.ratings import IdMap, Ratings
from probmf.data.synthetic import synthetic_ratings
from probmf.encoding import Layout, encode
from probmf.fitters.als import als_run, als_sweep, fit_als, make_priors
from probmf.metrics import predict_ratings, rmse
from probmf.model import init_params, predict_with_fallback
from probmf.objectives import regularized_loss

KEY = jax.random.PRNGKey(0)


@pytest.fixture(scope="module")
def data():
    ratings, truth = synthetic_ratings(num_users=50, num_items=30, num_ratings=600, rank=3, seed=1)
    return ratings, truth


def _arrays(r: Ratings):
    return jnp.asarray(r.users), jnp.asarray(r.items), jnp.asarray(r.values)


def test_item_rows_are_exact_minimisers_of_the_objective(data):
    """After a sweep the item rows are exact minimisers given the users: the gradient of
    the objective with respect to U and c is zero (autodiff), for plain and ALS-WR ridge."""
    ratings, _ = data
    u, i, r = _arrays(ratings)
    enc = encode(ratings)
    for alpha in (0.0, 1.0):
        priors = make_priors(enc.by_user.counts, enc.by_item.counts, lam=0.7, lam_bias=2.0, weight_exponent=alpha)
        params = init_params(KEY, ratings.num_users, ratings.num_items, 3, mu=float(ratings.values.mean()))
        params, _ = als_sweep(params, enc, priors)
        grad = jax.grad(regularized_loss)(params, u, i, r, priors)
        scale = float(jnp.max(jnp.abs(params.U))) * ratings.num_users
        assert float(jnp.max(jnp.abs(grad.U))) < 1e-4 * scale
        assert float(jnp.max(jnp.abs(grad.c))) < 1e-4 * scale


def test_row_update_equals_numpy_ridge_solution(data):
    """A user row x_i = [w_i; b_i] is the ridge solution given the items (numpy lstsq)."""
    ratings, _ = data
    enc = encode(ratings)
    lam, lam_b = 0.9, 3.0
    priors = make_priors(enc.by_user.counts, enc.by_item.counts, lam=lam, lam_bias=lam_b)
    params = init_params(KEY, ratings.num_users, ratings.num_items, 3, scale=0.5, mu=3.4)
    params = params._replace(c=jax.random.normal(jax.random.PRNGKey(5), (ratings.num_items,)) * 0.3)
    new, _ = als_sweep(params, enc, priors)
    U, c, mu = np.asarray(params.U, np.float64), np.asarray(params.c, np.float64), float(params.mu)
    for user in (0, 7, 19):
        sel = ratings.users == user
        A = np.hstack([U[ratings.items[sel]], np.ones((sel.sum(), 1))])
        y = ratings.values[sel] - mu - c[ratings.items[sel]]
        # min |A x - y|^2 + x^T D x  <=>  lstsq on [A; sqrt(D)] x = [y; 0]
        D = np.sqrt(np.array([lam, lam, lam, lam_b]))
        x, *_ = np.linalg.lstsq(np.vstack([A, np.diag(D)]), np.concatenate([y, np.zeros(4)]), rcond=None)
        # The sweep's user step used the initial items: compare to its W, b.
        w_b = np.concatenate([np.asarray(new.W[user]), [float(new.b[user])]])
        np.testing.assert_allclose(w_b, x, rtol=2e-4, atol=2e-5)
        # The seed's two equations hold at once.
        w, b = x[:3], x[3]
        lhs_w = np.linalg.solve(A[:, :3].T @ A[:, :3] + lam * np.eye(3), A[:, :3].T @ (y - b))
        np.testing.assert_allclose(w, lhs_w, rtol=1e-6, atol=1e-9)
        np.testing.assert_allclose(b, np.sum(y - A[:, :3] @ w) / (sel.sum() + lam_b), rtol=1e-6, atol=1e-9)


def test_objective_never_increases_and_trace_is_the_objective(data):
    ratings, _ = data
    u, i, r = _arrays(ratings)
    for alpha in (0.0, 0.5, 1.0):
        res = fit_als(KEY, ratings, rank=4, lam=0.3, lam_bias=1.0, weight_exponent=alpha, num_sweeps=12)
        trace = res.trace
        assert np.all(np.diff(trace) <= 1e-5 * trace[:-1]), trace
        direct = float(regularized_loss(res.params, u, i, r, res.priors))
        np.testing.assert_allclose(trace[-1], direct, rtol=1e-4)


def test_cg_solver_matches_cholesky(data):
    ratings, _ = data
    a = fit_als(KEY, ratings, rank=4, solver="cholesky", num_sweeps=8)
    b = fit_als(KEY, ratings, rank=4, solver="cg", cg_iters=8, num_sweeps=8)
    np.testing.assert_allclose(b.trace[-1], a.trace[-1], rtol=1e-3)
    assert np.all(np.diff(b.trace) <= 1e-5 * b.trace[:-1])


def test_blocks_and_tiles_do_not_change_the_result(data):
    ratings, _ = data
    params = init_params(KEY, ratings.num_users, ratings.num_items, 3, mu=3.5)
    enc = encode(ratings)
    priors = make_priors(enc.by_user.counts, enc.by_item.counts, lam=0.5, lam_bias=1.0)
    ref, ref_info = als_run(params, enc, priors, num_sweeps=3)
    for layout in (
        Layout(tile_len=4, chunk_entries=8, block_rows=7),
        Layout(tile_len=16, chunk_entries=64, block_rows=1),
    ):
        got, info = als_run(params, encode(ratings, layout), priors, num_sweeps=3)
        np.testing.assert_allclose(got.W, ref.W, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(got.c, ref.c, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(info.objective, ref_info.objective, rtol=1e-5)


def test_mle_is_finite_with_rows_rated_fewer_times_than_the_rank():
    """lambda = 0 and rank 8, with users and items that have 1-3 ratings, and an unrated item."""
    rng = np.random.default_rng(0)
    users = np.repeat(np.arange(12), rng.integers(1, 4, 12))
    items = rng.integers(0, 9, users.size)  # item 9 is never rated
    keep = np.unique(users * 100 + items, return_index=True)[1]
    r = Ratings(users[keep], items[keep], rng.uniform(1, 5, keep.size), IdMap.identity(12), IdMap.identity(10))
    res = fit_als(KEY, r, rank=8, lam=0.0, lam_bias=0.0, num_sweeps=5)
    for leaf in res.params:
        assert np.all(np.isfinite(np.asarray(leaf)))
    assert float(res.params.c[9]) == 0.0 and np.all(np.asarray(res.params.U[9]) == 0.0)
    # MLE interpolates the training data when it has enough freedom.
    pred = predict_ratings(res.params, r)
    assert rmse(pred, r.values) < 1e-2


def test_recovers_planted_rank_to_the_noise_floor():
    ratings, truth = synthetic_ratings(num_users=300, num_items=200, num_ratings=24_000, rank=3, noise=0.3, seed=3)
    rng = np.random.default_rng(0)
    test_mask = rng.random(len(ratings)) < 0.1
    train, test = ratings.take(~test_mask), ratings.take(test_mask)
    res = fit_als(KEY, train, rank=3, lam=0.02, lam_bias=1.0, weight_exponent=1.0, num_sweeps=25)
    err = rmse(predict_ratings(res.params, test), test.values)
    assert err < 0.3 * 1.15, err
    # Rank 1 cannot reach the floor: the planted rank matters.
    res1 = fit_als(KEY, train, rank=1, lam=0.02, lam_bias=1.0, weight_exponent=1.0, num_sweeps=25)
    assert rmse(predict_ratings(res1.params, test), test.values) > err * 1.2


def test_rank_zero_is_the_bias_model(data):
    ratings, _ = data
    res = fit_als(KEY, ratings, rank=0, lam_bias=2.0, num_sweeps=30)
    p = res.params
    assert p.W.shape == (ratings.num_users, 0)
    # Fixed point of b_i = sum_j (r_ij - c_j - mu) / (n_i + lam_b).
    resid = ratings.values - float(p.mu) - np.asarray(p.c)[ratings.items]
    b = np.bincount(ratings.users, resid, ratings.num_users) / (
        np.bincount(ratings.users, minlength=ratings.num_users) + 2.0
    )
    np.testing.assert_allclose(np.asarray(p.b), b, atol=1e-4)


def test_second_call_does_not_recompile(data):
    ratings, _ = data
    params = init_params(KEY, ratings.num_users, ratings.num_items, 2, mu=3.5)
    enc = encode(ratings)
    priors = make_priors(enc.by_user.counts, enc.by_item.counts, lam=0.5, lam_bias=1.0)
    als_run(params, enc, priors, num_sweeps=2)
    size = als_run._cache_size()
    # New values of every traced argument, same shapes: no retrace.
    priors2 = make_priors(enc.by_user.counts, enc.by_item.counts, lam=0.9, lam_bias=3.0)
    als_run(params._replace(W=params.W + 1.0), enc, priors2, num_sweeps=2)
    assert als_run._cache_size() == size


def test_deterministic_for_a_fixed_key(data):
    ratings, _ = data
    a = fit_als(jax.random.PRNGKey(3), ratings, rank=3, num_sweeps=4)
    b = fit_als(jax.random.PRNGKey(3), ratings, rank=3, num_sweeps=4)
    for x, y in zip(a.params, b.params, strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(rank=-1), "rank"),
        (dict(rank=2.5), "rank"),
        (dict(lam=-0.1), "lambda"),
        (dict(lam_bias=float("nan")), "lambda_bias"),
        (dict(num_sweeps=0), "num_sweeps"),
        (dict(solver="qr"), "solver"),
    ],
)
def test_bad_options_fail_before_compiling(data, kwargs, match):
    with pytest.raises(ValueError, match=match):
        fit_als(KEY, data[0], **kwargs)


def test_unknown_ids_cannot_be_trained_on(data):
    ratings, _ = data
    bad = Ratings(np.array([0, -1]), np.array([0, 1]), np.array([3.0, 4.0]), IdMap.identity(2), IdMap.identity(2))
    with pytest.raises(ValueError, match="unknown"):
        fit_als(KEY, bad)


def test_predictions_for_cold_pairs_use_biases(data):
    ratings, _ = data
    res = fit_als(KEY, ratings, rank=2, num_sweeps=3)
    p = res.params
    got = np.asarray(predict_with_fallback(p, jnp.array([-1, 3]), jnp.array([4, -1])))
    np.testing.assert_allclose(got, [float(p.mu + p.c[4]), float(p.mu + p.b[3])], rtol=1e-6)
