"""Users and items with no training rating in the Bayesian models: in each draw their vector
and bias come from that draw's prior, integrated out in closed form
(`probmf.posterior.draw_predictive`), so the predictive carries the row's own uncertainty,
and an unknown id (-1) and an id-map index with no training rating predict the same."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from probmf.data.ratings import Ratings
from probmf.data.synthetic import synthetic_ratings
from probmf.evaluate import score
from probmf.fitters import fit_gibbs, fit_nuts, fit_svi
from probmf.fitters.gibbs import init_state, row_priors
from probmf.model import MFParams
from probmf.persistence import FittedModel, load_model, save_model
from probmf.posterior import RowPrior, draw_predictive
from probmf.recommend import predict_pairs


def _random_spd(rng, k):
    A = rng.normal(size=(k, k))
    return A @ A.T / k + 0.2 * np.eye(k)


def test_draw_predictive_integrates_the_cold_rows_out_like_monte_carlo():
    """Against sampling: draw the cold rows' vectors and biases from their priors, and the
    rating noise, and compare the predictive's mean and variance with the sample moments."""
    rng = np.random.default_rng(0)
    k, n, m, tau = 3, 4, 5, 2.5
    params = MFParams(*(jnp.asarray(a, jnp.float32) for a in (
        rng.normal(size=(n, k)), rng.normal(size=(m, k)), rng.normal(size=n), rng.normal(size=m), 3.2)))  # fmt: skip
    prior_u = RowPrior(*(jnp.asarray(a, jnp.float32) for a in (rng.normal(size=k), _random_spd(rng, k), 0.3)))
    prior_i = RowPrior(*(jnp.asarray(a, jnp.float32) for a in (rng.normal(size=k), _random_spd(rng, k), 0.2)))
    seen = (jnp.array([True, True, False, True]), jnp.array([True, True, True, False, True]))
    # known pair; user -1; unseen user 2; item -1; unseen item 3; both cold (-1/-1 and 2/3)
    users = jnp.array([0, -1, 2, 1, 1, -1, 2], jnp.int32)
    items = jnp.array([1, 0, 0, -1, 3, -1, 3], jnp.int32)
    moments = draw_predictive(params, tau, users, items, (prior_u, prior_i), seen)
    mean, var = (np.asarray(a, np.float64) for a in moments)

    S = 400_000
    W, U, b, c, mu = (np.asarray(a, np.float64) for a in params)

    def rows(prior, table, bias, idx, cold):
        if not cold:
            return np.broadcast_to(table[idx], (S, k)), np.full(S, bias[idx])
        L = np.linalg.cholesky(np.asarray(prior.cov, np.float64))
        vec = np.asarray(prior.mean, np.float64) + rng.normal(size=(S, k)) @ L.T
        return vec, np.sqrt(float(prior.bias_var)) * rng.normal(size=S)

    cold_u = [False, True, True, False, False, True, True]
    cold_i = [False, False, False, True, True, True, True]
    for p in range(len(users)):
        w, bw = rows(prior_u, W, b, int(users[p]), cold_u[p])
        v, cv = rows(prior_i, U, c, int(items[p]), cold_i[p])
        r = np.sum(w * v, axis=1) + bw + cv + mu + rng.normal(size=S) / np.sqrt(tau)
        se_mean = r.std() / np.sqrt(S)
        se_var = r.var() * np.sqrt(2.0 / S) * 2  # kurtosis of a product of normals: a generous bound
        assert abs(mean[p] - r.mean()) < 4.5 * se_mean, p
        assert abs(var[p] - r.var()) < 4.5 * se_var, p
    assert var[0] == pytest.approx(1 / tau, rel=1e-6)
    np.testing.assert_allclose(mean[[1, 3, 5]], mean[[2, 4, 6]], rtol=1e-6)  # -1 == unseen index
    np.testing.assert_allclose(var[[1, 3, 5]], var[[2, 4, 6]], rtol=1e-6)


def test_implicit_cold_prior_is_the_law_of_a_row_with_unseen_implicit_feedback():
    """Under implicit feedback a cold row's vector is w + |N|^-1/2 sum_{j in N} y_j over an
    unseen N: sample it from the model (w ~ N(mu, Lam^-1), b ~ N(0, 1/lam_b), y_j ~ N(0,
    (c P)^-1)) and compare its moments with `gibbs.row_priors`."""
    rng = np.random.default_rng(3)
    k, c_w, c_u, draws = 3, 0.7, 2.5, 100_000
    lam_w, lam_u = _random_spd(rng, k), _random_spd(rng, k)
    params = MFParams(jnp.zeros((4, k)), jnp.zeros((5, k)), jnp.zeros(4), jnp.zeros(5), jnp.float32(3.0))
    state = init_state(params, 2.0, implicit=True)
    sides = (state.implicit[0]._replace(c=jnp.float32(c_w)), state.implicit[1]._replace(c=jnp.float32(c_u)))
    state = state._replace(mu_w=jnp.asarray(rng.normal(size=k), jnp.float32), lam_w=jnp.asarray(lam_w, jnp.float32),
                           mu_u=jnp.zeros(k), lam_u=jnp.asarray(lam_u, jnp.float32), lam_b=jnp.float32(4.0),
                           lam_c=jnp.float32(0.5), implicit=sides)  # fmt: skip
    sides = zip(row_priors(state), (state.mu_w, 0.0), (lam_w, lam_u), (4.0, 0.5), (c_w, c_u), strict=True)
    for prior, mu, lam, lam_b, c in sides:
        P_inv = np.zeros((k + 1, k + 1))
        P_inv[:k, :k], P_inv[k, k] = np.linalg.inv(lam), 1.0 / lam_b
        num = 7  # |N|: any size gives the same law
        row = rng.multivariate_normal(np.zeros(k + 1), P_inv, size=draws)
        y = rng.multivariate_normal(np.zeros(k + 1), P_inv / c, size=(draws, num))
        sample = row + y.sum(axis=1) / np.sqrt(num)
        cov = np.cov(sample.T)
        np.testing.assert_allclose(np.asarray(prior.mean), np.broadcast_to(mu, (k,)), atol=1e-6)
        np.testing.assert_allclose(np.asarray(prior.cov), cov[:k, :k], atol=0.03 * np.abs(cov[:k, :k]).max())
        assert float(prior.bias_var) == pytest.approx(cov[k, k], rel=0.03)


@pytest.fixture(scope="module")
def holes():
    """Tiny model data with user 5 and item 3 left without a training rating (still in the
    id maps: zero-count indices), and the same pairs addressed by -1."""
    ratings, _ = synthetic_ratings(num_users=40, num_items=30, num_ratings=600, rank=2, seed=4)
    keep = (ratings.users != 5) & (ratings.items != 3)
    train = ratings.take(keep)
    users = np.array([0, 1, 5, 5, 2, 5], np.int32)
    items = np.array([3, 7, 2, 3, 0, 11], np.int32)
    return train, (users, items), (np.where(users == 5, -1, users), np.where(items == 3, -1, items))


FITS = {
    "gibbs": lambda key, tr: fit_gibbs(key, tr, rank=2, num_warmup=10, num_samples=30),
    "gibbs-implicit": lambda key, tr: fit_gibbs(key, tr, rank=2, num_warmup=10, num_samples=30, implicit=True),
    "svi": lambda key, tr: fit_svi(key, tr, rank=2, num_epochs=3, num_samples=10),
    "nuts": lambda key, tr: fit_nuts(key, tr, rank=2, num_warmup=5, num_samples=5, num_chains=1, max_tree_depth=3),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(FITS))
def test_unknown_id_and_zero_count_index_give_the_same_predictive(holes, name):
    train, by_index, by_unknown = holes
    fitted = FITS[name](jax.random.PRNGKey(1), train)
    mean, sd = (np.asarray(a) for a in fitted.predictive(*by_index))
    mean2, sd2 = (np.asarray(a) for a in fitted.predictive(*by_unknown))
    np.testing.assert_array_equal(mean, mean2)
    np.testing.assert_array_equal(sd, sd2)
    # A cold row adds its prior's variance: wider than the same pair's known neighbours.
    assert sd[3] > sd[0] and sd[3] > sd[2]


@pytest.mark.slow
def test_summary_and_rounded_likelihood_treat_cold_rows_alike(holes):
    train, by_index, by_unknown = holes
    train = Ratings(train.users, train.items, np.round(train.values).clip(1, 5), train.user_ids, train.item_ids)
    key = jax.random.PRNGKey(2)
    options = dict(rank=2, num_warmup=5, num_samples=20, likelihood="rounded")
    full = fit_gibbs(key, train, predict_pairs=by_unknown, **options)
    np.testing.assert_array_equal(full.posterior.predictive(*by_index)[1], full.posterior.predictive(*by_unknown)[1])
    np.testing.assert_allclose(full.summary.predictive(*by_unknown), full.posterior.predictive(*by_unknown), rtol=2e-5)


@pytest.mark.slow
def test_saved_posterior_keeps_its_cold_priors(holes, tmp_path):
    train, by_index, _ = holes
    fitted = FITS["gibbs"](jax.random.PRNGKey(3), train)
    save_model(tmp_path / "m", FittedModel.from_training("gibbs", {}, fitted, train))
    model = load_model(tmp_path / "m")
    np.testing.assert_array_equal(model.fitted.predictive(*by_index)[1], fitted.predictive(*by_index)[1])
    # probmf predict's path, in raw ids: an id the model never saw and user 5 (in the id map,
    # no training rating) both get the cold predictive, with its sd, and known=False.
    raw_users = np.array([train.user_ids.raw[0], 10**6, train.user_ids.raw[5]])
    raw_items = np.full(3, train.item_ids.raw[2])
    pred = predict_pairs(model, raw_users, raw_items, clip=False)
    np.testing.assert_array_equal(pred.known, [True, False, False])
    assert pred.sd[1] == pred.sd[2] > pred.sd[0]
    np.testing.assert_allclose(pred.sd[1], fitted.predictive(jnp.array([-1]), jnp.array([2]))[1][0], rtol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("implicit", [False, True])
def test_cold_items_are_calibrated_on_data_from_the_model(implicit):
    """Every rating of 25 of 150 items held out: the posterior's 90% intervals for those cold
    pairs cover about 90% of them (the prior's uncertainty left out covers far fewer). With
    implicit feedback the cold prior also integrates out the unseen implicit term."""
    ratings, _ = synthetic_ratings(num_users=300, num_items=150, num_ratings=9000, rank=3, noise=0.5, seed=7)
    cold_items = np.random.default_rng(0).choice(150, 25, replace=False)
    cold = np.isin(ratings.items, cold_items)
    train, test = ratings.take(~cold), ratings.take(cold)
    fitted = fit_gibbs(jax.random.PRNGKey(0), train, rank=3, num_warmup=30, num_samples=100, implicit=implicit)
    row = score(fitted, train, test)
    assert row["n_cold"] == len(test) > 500
    assert 0.85 <= row["coverage_90_cold"] <= 0.95, row
    assert 0.43 <= row["coverage_50_cold"] <= 0.57, row
