"""The embedding MLP and the MF + ANN residual hybrid: forward pass, gradients, fallback."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from probmf.data.splits import random_split
from probmf.data.synthetic import synthetic_ratings
from probmf.fitters import FITTERS
from probmf.fitters import mlp as mlp_mod
from probmf.fitters import residual as residual_mod
from probmf.fitters.als import fit_als
from probmf.fitters.holdout import validation_split
from probmf.fitters.mlp import Hyper, MLPParams, apply, fit_mlp, init, mlp_objective
from probmf.fitters.residual import fit_residual, residual_objective
from probmf.metrics import predict_ratings, rmse
from probmf.model import predict
from probmf.nn import Dense, tower

KEY = jax.random.PRNGKey(0)
FAST = dict(num_epochs=4, batch_size=256)
RFAST = dict(FAST, num_folds=2)  # fewer base fits: each new shape compiles ALS once more


@pytest.fixture(scope="module")
def data():
    ratings, _ = synthetic_ratings(num_users=120, num_items=80, num_ratings=5000, rank=3, noise=0.5, seed=2)
    return random_split(ratings, 0.2, seed=0)


def test_apply_by_hand():
    """r_hat = mu + b_i + c_j + W2^T relu(W1^T [p_i; q_j] + b1) + b2, on a 2 x 2 example."""
    layers = (
        Dense(jnp.array([[1.0, -1.0], [0.0, 1.0], [2.0, 0.0], [0.0, 0.0]]), jnp.array([0.0, 0.5])),
        Dense(jnp.array([[1.0], [2.0]]), jnp.array([0.25])),
    )
    params = MLPParams(
        P=jnp.array([[1.0, 2.0], [0.0, -1.0]]),
        Q=jnp.array([[0.5, 0.0], [1.0, 1.0]]),
        b=jnp.array([0.1, 0.2]),
        c=jnp.array([0.0, -0.3]),
        mu=jnp.float32(3.0),
        layers=layers,
    )
    # pair (0, 1): x = [1, 2, 1, 1]; h = relu([1 + 2, -1 + 2 + 0.5]) = [3, 1.5]; f = 3 + 3 + 0.25
    # pair (1, 0): x = [0, -1, 0.5, 0]; h = relu([1, 0 - 1 + 0.5]) = [1, 0]; f = 1 + 0.25
    want = np.array([3.0 + 0.1 - 0.3 + 6.25, 3.0 + 0.2 + 0.0 + 1.25])
    np.testing.assert_allclose(apply(params, jnp.array([0, 1]), jnp.array([1, 0])), want, rtol=1e-6)
    fresh = init(KEY, 5, 4, rank=3, hidden=(6, 2), mu=2.5)
    assert [lay.W.shape for lay in fresh.layers] == [(6, 6), (6, 2), (2, 1)]
    # The output layer starts at zero: a fresh model predicts mu + biases.
    np.testing.assert_allclose(apply(fresh, jnp.arange(4), jnp.arange(4)), 2.5)


def test_dropout_masks_and_rescales():
    layers = (Dense(jnp.eye(3), jnp.zeros(3)), Dense(jnp.ones((3, 1)), jnp.zeros(1)))
    x = jnp.ones((2000, 3))
    out = tower(layers, x, dropout=0.5, rng_key=KEY)
    assert set(np.unique(np.asarray(out))) <= {0.0, 2.0, 4.0, 6.0}
    assert abs(float(out.mean()) - 3.0) < 0.1  # inverted dropout keeps the mean
    np.testing.assert_allclose(tower(layers, x, dropout=0.5), 3.0)  # no key: no dropout


@pytest.mark.slow
def test_gradients_of_the_objectives():
    """Finite differences in float64 (ReLU kinks are rare there at these step sizes)."""
    rng = np.random.default_rng(0)
    f64 = lambda tree: jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), tree)  # noqa: E731
    with jax.enable_x64(True):
        params = init(KEY, 6, 5, rank=2, hidden=(4,), mu=3.0)
        # A non-zero output layer so that every weight has a gradient.
        out = Dense(jnp.asarray(rng.normal(size=(4, 1))), params.layers[1].b)
        params = f64(params._replace(layers=(params.layers[0], out)))
        users, items = jnp.array([0, 1, 5, 3]), jnp.array([4, 0, 2, 2])
        batch = (users, items, jnp.array([1.0, 4.0, 5.0, 2.0]), jnp.full(4, 0.5), jnp.full(4, 0.25), jnp.arange(4))
        hyper = Hyper(lam=0.3, lam_bias=0.2, lam_net=0.1, dropout=0.0, num_ratings=4)
        mask = jnp.array([1.0, 1.0, 1.0, 0.0])
        # mu is held at the data mean (no gradient by design), so differentiate the rest.
        f = lambda P, Q, b, c, layers: mlp_objective(MLPParams(P, Q, b, c, params.mu, layers), batch, mask, hyper=hyper)  # noqa: E731, E501
        check_grads(f, tuple(params._replace(mu=None)[:4]) + (params.layers,), order=1, modes=["rev"], eps=1e-6)

        net = residual_mod.NetParams(
            E=jnp.asarray(rng.normal(size=(6, 2))),
            F=jnp.asarray(rng.normal(size=(5, 2))),
            layers=(
                Dense(jnp.asarray(rng.normal(size=(4 + residual_mod._NUM_FEATURES, 3))), jnp.zeros(3)),
                Dense(jnp.ones((3, 1)), jnp.zeros(1)),
            ),
        )
        x = jnp.asarray(rng.normal(size=(4, residual_mod._NUM_FEATURES)))
        g = lambda p: residual_objective(p, batch[:6] + (x,), jnp.ones(4), hyper=hyper)  # noqa: E731
        check_grads(g, (f64(net),), order=1, modes=["rev"], eps=1e-6)


@pytest.mark.slow
def test_fits_beat_the_global_mean(data):
    train, test = data
    mean_rmse = rmse(np.full(len(test), train.values.mean()), test.values)
    res_mlp = fit_mlp(KEY, train, rank=8, hidden=(16,), num_epochs=15, batch_size=256, learning_rate=1e-2)
    res_hyb = fit_residual(KEY, train, hidden=(8,), **RFAST)
    for res in (res_mlp, res_hyb):
        assert rmse(predict_ratings(res, test, clip=(1, 5)), test.values) < mean_rmse - 0.05


@pytest.mark.slow
def test_residual_falls_back_when_the_network_cannot_help(data):
    """Constant ratings: the MF is exact (mu, zero factors and biases), so its residuals are 0
    and the network cannot beat it on the validation split; it must be dropped."""
    train, _ = data
    ratings = dataclasses.replace(train, values=np.full(len(train), 3.0, np.float32))
    res = fit_residual(KEY, ratings, hidden=(8,), embedding_dim=4, **RFAST)
    assert not res.use_network
    assert res.val_rmse_hybrid >= res.val_rmse_mf
    # The fallback is the base itself, refitted on all ratings with the same key.
    als = fit_als(KEY, ratings)
    u, i = jnp.asarray(ratings.users), jnp.asarray(ratings.items)
    np.testing.assert_allclose(res.predict(u, i), predict(als.params, u, i), rtol=1e-6)


@pytest.mark.slow
def test_residual_never_worse_than_its_base_on_validation(data):
    """Without the refit the result is the fit on the non-validation ratings: its clipped RMSE
    on the validation split, recomputed here from its predictions, is never above that of its
    base (ALS fitted with the same key on the same ratings), and the network is dropped (the
    predictions are the base's) exactly when it did not do better."""
    train, _ = data
    lo, hi = float(train.values.min()), float(train.values.max())
    # the hold-out fit_residual makes: its key is the second of four split from fold_in(key, 1)
    fit, val = validation_split(jax.random.split(jax.random.fold_in(KEY, 1), 4)[1], train, 0.1)
    vu, vi = jnp.asarray(val.users), jnp.asarray(val.items)

    def clipped_rmse(pred):
        return float(np.sqrt(np.mean((np.clip(np.asarray(pred, np.float64), lo, hi) - val.values) ** 2)))

    base = predict(fit_als(KEY, fit).params, vu, vi)
    base_rmse = clipped_rmse(base)
    for joint in (False, True):
        res = fit_residual(KEY, train, hidden=(8,), joint=joint, refit=False, **RFAST)
        assert res.joint == joint
        np.testing.assert_allclose(res.val_rmse_mf, base_rmse, rtol=1e-5)
        got = clipped_rmse(res.predict(vu, vi))
        assert got <= base_rmse + 1e-6, (joint, got, base_rmse)
        if res.use_network:
            np.testing.assert_allclose(got, res.val_rmse_hybrid, rtol=1e-5)
            assert got < base_rmse
        else:
            np.testing.assert_allclose(res.predict(vu, vi), base, rtol=1e-6)
            assert res.val_rmse_hybrid >= base_rmse - 1e-6


@pytest.mark.slow
def test_unknown_ids_fall_back_without_error(data):
    train, _ = data
    users, items = jnp.array([0, -1, 3, -1, 10_000]), jnp.array([1, 2, -1, -1, 0])
    for res in (fit_mlp(KEY, train, rank=4, hidden=8, **FAST), fit_residual(KEY, train, hidden=8, **RFAST)):
        pred = np.asarray(res.predict(users, items))
        assert pred.shape == (5,) and np.all(np.isfinite(pred))
    mf = fit_residual(KEY, train, hidden=8, **RFAST).mf
    # An unknown user or item gets the MF's bias fallback; both unknown: mu.
    np.testing.assert_allclose(res.predict(jnp.array([-1]), jnp.array([-1])), mf.mu, rtol=1e-6)
    np.testing.assert_allclose(res.predict(jnp.array([-1]), jnp.array([2])), mf.mu + mf.c[2], rtol=1e-6)


def _compiled() -> dict:
    return {k: fn._cache_size() for k, (_, _, fn) in mlp_mod._EPOCHS.items()}


@pytest.mark.slow
def test_deterministic_and_no_retrace(data):
    train, _ = data
    u, i = jnp.asarray(train.users), jnp.asarray(train.items)
    for fit, options in ((fit_mlp, dict(rank=4, hidden=8)), (fit_residual, dict(hidden=(8,), num_folds=2))):
        a = fit(KEY, train, **options, **FAST)
        compiled = _compiled()
        a.predict(u, i)
        predict_cache = (mlp_mod._mlp_predict._cache_size(), residual_mod._residual_predict._cache_size())
        b = fit(KEY, train, **options, **FAST)
        c = fit(jax.random.PRNGKey(1), train, **options, **FAST)
        # No new compilation of any epoch, nor of prediction, for a second and third fit.
        assert _compiled() == compiled
        np.testing.assert_array_equal(a.predict(u, i), b.predict(u, i))
        assert not np.allclose(a.predict(u, i), c.predict(u, i))
        assert (mlp_mod._mlp_predict._cache_size(), residual_mod._residual_predict._cache_size()) == predict_cache


@pytest.mark.parametrize(
    ("fitter", "options"),
    [
        (fit_mlp, {"hidden": (0,)}),
        (fit_mlp, {"hidden": "64"}),
        (fit_mlp, {"rank": 0}),
        (fit_mlp, {"dropout": 1.0}),
        (fit_mlp, {"learning_rate": 0.0}),
        (fit_mlp, {"batch_size": 0}),
        (fit_residual, {"base": "svd"}),
        (fit_residual, {"validation_fraction": 0.0}),
        (fit_residual, {"validation_fraction": 1e-6}),  # holds out no rating
        (fit_residual, {"num_folds": 1}),
        (fit_residual, {"lam_net": -1.0}),
        (fit_residual, {"hidden": ()}),
    ],
)
def test_bad_options_raise_before_compiling(data, fitter, options, monkeypatch):
    def boom(*args, **kwargs):
        raise AssertionError("compiled before validating options")

    monkeypatch.setattr(mlp_mod, "train_minibatch", boom)
    monkeypatch.setattr(residual_mod, "train_minibatch", boom)
    monkeypatch.setattr(residual_mod, "fit_als", boom)
    with pytest.raises(ValueError):
        fitter(KEY, data[0], **options)


def test_registered_and_int_hidden_means_one_layer(data):
    assert FITTERS["mlp"] is fit_mlp and FITTERS["residual"] is fit_residual
    res = fit_mlp(KEY, data[0], rank=4, hidden=8, num_epochs=1)
    assert [lay.W.shape for lay in res.params.layers] == [(8, 8), (8, 1)]
    assert res.rank == 4
