"""AutoRec: the masked loss by hand, autodiff, CSR batches, fallbacks, fitting on synthetic data."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from probmf.data.splits import random_split
from probmf.data.synthetic import synthetic_ratings
from probmf.fitters import FITTERS
from probmf.fitters.autorec import (
    AutoRecParams,
    apply,
    fit_autorec,
    fit_autorec_i,
    fit_autorec_u,
    init,
    loss,
    run_epoch,
)
from probmf.fitters.baseline import fit_baseline
from probmf.fitters.sparse_rows import densify, rows_csr
from probmf.metrics import predict_ratings, rmse
from probmf.model import predict_with_fallback

KEY = jax.random.PRNGKey(0)
FAST = {"hidden": 16, "num_epochs": 30, "patience": 30, "batch_size": 16, "learning_rate": 3e-3, "lam": 1.0}


@pytest.fixture(scope="module")
def data():
    ratings, _ = synthetic_ratings(num_users=60, num_items=40, num_ratings=1200, rank=2, seed=3)
    return random_split(ratings, 0.2, seed=0)


def _tiny_params():
    k1, k2, k3, k4 = jax.random.split(jax.random.PRNGKey(1), 4)
    return AutoRecParams(
        W1=jax.random.normal(k1, (3, 2)),
        b1=jax.random.normal(k2, (2,)),
        W2=jax.random.normal(k3, (2, 3)),
        b2=jax.random.normal(k4, (3,)),
    )


def test_loss_by_hand_and_unobserved_cells_do_not_count():
    params = _tiny_params()
    x = jnp.array([[4.0, 0.0, 2.0], [0.0, 5.0, 0.0]])
    mask = x > 0
    lam = 0.3
    W1, b1, W2, b2 = (np.asarray(p, np.float64) for p in params)
    total = 0.0
    for row, m in zip(np.asarray(x, np.float64), np.asarray(mask), strict=True):
        h = 1.0 / (1.0 + np.exp(-(row * m) @ W1 - b1)) @ W2 + b2
        total += sum((h[c] - row[c]) ** 2 for c in range(3) if m[c])
    total += lam / 2 * (np.sum(W1**2) + np.sum(W2**2))
    np.testing.assert_allclose(float(loss(params, x, mask, lam=lam)), total, rtol=1e-5)
    # Another filler in the unobserved cells changes nothing.
    x_other = jnp.where(mask, x, 7.5)
    assert float(loss(params, x_other, mask, lam=lam)) == float(loss(params, x, mask, lam=lam))


def test_gradients_of_the_loss():
    with jax.enable_x64(True):
        params = jax.tree.map(lambda p: p.astype(jnp.float64), _tiny_params())
        x = jnp.array([[4.0, 0.0, 2.0], [0.0, 5.0, 1.0]], jnp.float64)
        check_grads(lambda p: loss(p, x, x > 0, lam=0.3), (params,), order=2, modes=["rev"])


def test_csr_batches_equal_dense_rows(data):
    train, _ = data
    dense = np.zeros((train.num_users, train.num_items), np.float32)
    dense[train.users, train.items] = train.values
    for item_based, matrix in ((True, dense.T), (False, dense)):
        csr, width, max_len = rows_csr(train, item_based=item_based)
        assert width == matrix.shape[1]
        rows = jnp.array([3, -1, 0, matrix.shape[0] - 1, 3], jnp.int32)
        x, mask = densify(csr, rows, width, max_len)
        expect = np.stack([matrix[r] if r >= 0 else np.zeros(width) for r in np.asarray(rows)])
        np.testing.assert_array_equal(np.asarray(x), expect)
        np.testing.assert_array_equal(np.asarray(mask), expect > 0)


@pytest.mark.slow
def test_fit_beats_the_global_mean(data):
    train, test = data
    mean_rmse = rmse(np.full(len(test), train.values.mean()), test.values)
    for fit in (fit_autorec_i, fit_autorec_u):
        result = fit(KEY, train, **FAST)
        assert result.rank == FAST["hidden"]
        score = rmse(predict_ratings(result, test, clip=(1, 5)), test.values)
        assert score < 0.95 * mean_rmse, (fit.__name__, score, mean_rmse)


def test_unknown_ids_fall_back_to_the_baseline(data):
    train, _ = data
    result = fit_autorec(KEY, train, **{**FAST, "num_epochs": 2})
    baseline = fit_baseline(KEY, train).params
    users = jnp.array([-1, 0, -1, 5, train.num_users - 1], jnp.int32)
    items = jnp.array([0, -1, -1, 2, train.num_items + 3], jnp.int32)
    pred = np.asarray(result.predict(users, items))
    expect = np.asarray(predict_with_fallback(baseline, users, items))
    cold = np.array([True, True, True, False, True])
    assert np.all(np.isfinite(pred))
    np.testing.assert_allclose(pred[cold], expect[cold], rtol=1e-6)


def test_deterministic_for_a_fixed_key(data):
    train, test = data
    u, i = jnp.asarray(test.users), jnp.asarray(test.items)
    options = {**FAST, "num_epochs": 3, "dropout": 0.3}
    a = fit_autorec(KEY, train, **options).predict(u, i)
    b = fit_autorec(KEY, train, **options).predict(u, i)
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_no_retrace_on_a_second_epoch(data):
    train, _ = data
    csr, width, max_len = rows_csr(train, item_based=True)
    params = init(KEY, width, 4, mu=3.5)
    import optax

    opt_state = optax.adam(1e-3).init(params)
    hyper = tuple(jnp.float32(v) for v in (1e-3, 1.0, 0.1, 0.1, 0.001))
    batches = jnp.arange(48, dtype=jnp.int32).reshape(3, 16) % train.num_items
    run_epoch(params, opt_state, csr, batches, KEY, hyper, width=width, max_len=max_len)
    before = run_epoch._cache_size()
    params, opt_state, values = run_epoch(
        params, opt_state, csr, batches, jax.random.PRNGKey(2), hyper, width=width, max_len=max_len
    )
    assert run_epoch._cache_size() == before
    assert values.shape == (3,)
    assert apply(params, jnp.zeros((2, width))).shape == (2, width)


@pytest.mark.parametrize(
    "bad",
    [{"hidden": 0}, {"hidden": -3}, {"lam": -1.0}, {"learning_rate": 0.0}, {"dropout": 1.0}, {"dropout": -0.1}],
)
def test_bad_options_raise_before_compiling(data, bad):
    train, _ = data
    before = run_epoch._cache_size()
    with pytest.raises(ValueError):
        fit_autorec(KEY, train, **bad)
    assert run_epoch._cache_size() == before


def test_registered_for_evaluate():
    assert FITTERS["autorec-i"] is fit_autorec_i
    assert FITTERS["autorec-u"] is fit_autorec_u
