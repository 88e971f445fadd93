"""One suite every fitter must pass, on small synthetic data drawn from the model: it fits,
predicts finite values for known and unknown ids, beats the global mean on held-out ratings,
and is deterministic for a fixed key."""

import jax.numpy as jnp
import numpy as np
import pytest

from probmf.data.synthetic import synthetic_ratings
from probmf.evaluate import fit_model
from probmf.fitters import FITTERS
from probmf.metrics import predict_ratings, rmse
from probmf.model import predict_with_fallback

# Small, fast settings per fitter; every registered fitter must appear here.
QUICK = {
    "baseline": {},
    "svd": {"rank": 3},
    "als": {"rank": 3, "num_sweeps": 8},
    "optax": {"rank": 3, "num_epochs": 10, "batch_size": 256},
    "mlp": {"rank": 4, "hidden": (8,), "num_epochs": 10},
    "residual": {"hidden": (8,), "num_epochs": 5, "num_folds": 2},
    "autorec-i": {"hidden": 16, "num_epochs": 40, "learning_rate": 1e-2, "lam": 1.0},
    "autorec-u": {"hidden": 16, "num_epochs": 40, "learning_rate": 1e-2, "lam": 1.0},
    "gibbs": {"rank": 3, "num_warmup": 10, "num_samples": 20},
    "svi": {"rank": 3, "num_epochs": 10, "num_samples": 10},
    "nuts": {"rank": 2, "num_warmup": 30, "num_samples": 30, "num_chains": 1},
}


@pytest.fixture(scope="module")
def split():
    ratings, _ = synthetic_ratings(num_users=60, num_items=40, num_ratings=1200, rank=3, noise=0.4, seed=21)
    test = np.random.default_rng(0).random(len(ratings)) < 0.2
    return ratings.take(~test), ratings.take(test)


def test_every_fitter_is_in_the_suite():
    assert set(FITTERS) == set(QUICK)


@pytest.mark.parametrize("name", sorted(QUICK))
def test_fitter_contract(split, name):
    train, test = split
    fitted, _, _ = fit_model(name, train, options=QUICK[name], seed=3)
    pred = predict_ratings(fitted, test)
    assert pred.shape == (len(test),) and np.all(np.isfinite(pred))
    mean_rmse = rmse(np.full(len(test), train.values.mean()), test.values)
    assert rmse(pred, test.values) < mean_rmse, name

    # Unknown ids (-1, or past the end) fall back to finite predictions, never a wrapped index.
    users = jnp.array([-1, 0, train.num_users + 5, -1])
    items = jnp.array([0, -1, 1, -1])
    predict = fitted.predict if hasattr(fitted, "predict") else lambda u, i: predict_with_fallback(fitted, u, i)
    cold = np.asarray(predict(users, items))
    assert np.all(np.isfinite(cold))

    again, _, _ = fit_model(name, train, options=QUICK[name], seed=3)
    np.testing.assert_array_equal(predict_ratings(again, test), pred)


def test_unknown_user_gets_the_item_side_prediction(split):
    """For an MF fit, a cold user's prediction is exactly mu + c_j (no factor, no user bias)."""
    train, _ = split
    fitted, _, _ = fit_model("als", train, options=QUICK["als"])
    got = float(predict_with_fallback(fitted, jnp.array([-1]), jnp.array([2]))[0])
    assert got == pytest.approx(float(fitted.mu + fitted.c[2]), rel=1e-6)
