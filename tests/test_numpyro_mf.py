"""The NumPyro model against the MAP objective, and its NUTS and SVI fitters on synthetic data."""

import importlib.util

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import pytest
from numpyro.diagnostics import effective_sample_size
from numpyro.infer.util import log_density

from probmf.data.synthetic import synthetic_preset, synthetic_ratings
from probmf.diagnostics import prediction_diagnostics, prediction_draws, to_inference_data
from probmf.evaluate import evaluate_fold
from probmf.fitters import FITTERS
from probmf.fitters.gibbs import fit_gibbs
from probmf.fitters.numpyro_mf import ModelPriors, fit_nuts, fit_svi, mf_model
from probmf.metrics import interval_scores
from probmf.model import init_params
from probmf.objectives import Priors, map_loss


@pytest.fixture(scope="module")
def tiny():
    ratings, _ = synthetic_ratings(num_users=30, num_items=20, num_ratings=300, rank=2, noise=0.5, seed=7)
    return ratings


def test_fixed_variant_log_density_is_minus_map_loss(tiny):
    """log p(R, theta | lam, tau) = -map_loss(theta; sigma = tau^-1/2) + log Gamma(tau | a, b),
    so differences between parameter settings are equal and so is the constant."""
    r = tiny
    users, items, values = jnp.asarray(r.users), jnp.asarray(r.items), jnp.asarray(r.values)
    priors = ModelPriors(lam=3.0, lam_bias=0.7)
    kwargs = dict(num_users=r.num_users, num_items=r.num_items, rank=2, mu=3.4, hyper="fixed", priors=priors)
    tau = 2.5
    logp, map_ = [], []
    for seed in (0, 1):
        p = init_params(jax.random.PRNGKey(seed), r.num_users, r.num_items, 2, scale=0.6, mu=3.4)
        p = p._replace(b=0.3 * jax.random.normal(jax.random.PRNGKey(10 + seed), (r.num_users,)))
        p = p._replace(c=0.4 * jax.random.normal(jax.random.PRNGKey(20 + seed), (r.num_items,)))
        sites = {"W": p.W, "U": p.U, "b": p.b, "c": p.c, "tau": jnp.float32(tau)}
        logp.append(float(log_density(mf_model, (users, items, values), kwargs, sites)[0]))
        loss = map_loss(p, users, items, values, Priors.uniform(3.0, 0.7), sigma=tau**-0.5)
        map_.append(float(loss))
    assert abs(logp[0] - logp[1]) > 10.0  # the two settings differ, so the check has teeth
    np.testing.assert_allclose(logp[0] - logp[1], -(map_[0] - map_[1]), rtol=1e-4)
    tau_prior = float(dist.Gamma(priors.a_tau, priors.b_tau).log_prob(tau))
    np.testing.assert_allclose(logp[0], -map_[0] + tau_prior, rtol=1e-5)


def test_minibatch_likelihood_is_scaled_by_n_over_batch(tiny):
    r = tiny
    users, items, values = jnp.asarray(r.users), jnp.asarray(r.items), jnp.asarray(r.values)
    kwargs = dict(num_users=r.num_users, num_items=r.num_items, rank=2, mu=3.4, hyper="fixed")
    p = init_params(jax.random.PRNGKey(0), r.num_users, r.num_items, 2, scale=0.5, mu=3.4)
    sites = {"W": p.W, "U": p.U, "b": p.b, "c": p.c, "tau": jnp.float32(2.0)}

    def loglik(n_batch, num_ratings):
        _, trace = log_density(
            mf_model,
            (users[:n_batch], items[:n_batch], values[:n_batch]),
            {**kwargs, "num_ratings": num_ratings},
            sites,
        )
        site = trace["r"]
        return float(jnp.sum(site["fn"].log_prob(site["value"])) * site["scale"])

    np.testing.assert_allclose(loglik(100, 300), 3.0 * loglik(100, None), rtol=1e-6)


def test_svi_is_deterministic_and_fills_a_posterior(tiny):
    a = fit_svi(jax.random.PRNGKey(3), tiny, rank=2, num_epochs=3, batch_size=64, num_samples=6)
    b = fit_svi(jax.random.PRNGKey(3), tiny, rank=2, num_epochs=3, batch_size=64, num_samples=6)
    for x, y in zip(jax.tree.leaves(a.posterior), jax.tree.leaves(b.posterior), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    np.testing.assert_array_equal(a.elbo, b.elbo)
    assert a.posterior.draws.W.shape == (6, 30, 2) and a.posterior.tau.shape == (6,) and a.elbo.shape == (3,)
    mean, sd = a.predictive(jnp.asarray(tiny.users[:5]), jnp.asarray(tiny.items[:5]))
    assert mean.shape == sd.shape == (5,) and bool(jnp.all(sd > 0))


def test_nuts_is_deterministic_and_reports_diagnostics(tiny):
    opts = dict(rank=2, num_warmup=10, num_samples=8, num_chains=1, max_tree_depth=3, num_check_pairs=7)
    a = fit_nuts(jax.random.PRNGKey(5), tiny, **opts)
    b = fit_nuts(jax.random.PRNGKey(5), tiny, **opts)
    for x, y in zip(jax.tree.leaves(a.posterior), jax.tree.leaves(b.posterior), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    assert a.posterior.num_samples == 8 and a.rank == 2
    assert a.info.r_hat.shape == a.info.ess.shape == (7,) and a.info.num_divergences.shape == (1,)
    assert np.isfinite(a.r_hat_max) and a.ess_min > 0 and np.all(a.info.step_size > 0)


def test_svi_intervals_cover_held_out_cells_from_the_model():
    ratings, _ = synthetic_ratings(num_users=200, num_items=150, num_ratings=12_000, rank=3, noise=0.5, seed=11)
    test_mask = np.random.default_rng(1).random(len(ratings)) < 0.2
    train, test = ratings.take(~test_mask), ratings.take(test_mask)
    res = fit_svi(jax.random.PRNGKey(0), train, rank=3, num_epochs=40, batch_size=1024, learning_rate=0.05)
    mean, sd = res.predictive(jnp.asarray(test.users), jnp.asarray(test.items))
    scores = interval_scores(mean, sd, test.values)
    assert 0.80 <= scores["coverage_90"] <= 0.97, scores
    assert abs(float(jnp.mean(res.posterior.tau)) ** -0.5 - 0.5) < 0.1  # noise sd recovered
    assert res.elbo[-1] > res.elbo[0]


def test_nuts_matches_gibbs_predictive_means(tiny):
    """Same model (BPMF's Normal-Wishart hyperpriors): the posterior predictive means of the two
    samplers agree within their Monte Carlo error."""
    users, items = jnp.asarray(tiny.users[:60]), jnp.asarray(tiny.items[:60])
    nuts = fit_nuts(jax.random.PRNGKey(0), tiny, rank=2, hyper="wishart", num_warmup=200, num_samples=500, num_chains=1)
    gibbs = fit_gibbs(jax.random.PRNGKey(1), tiny, rank=2, num_warmup=100, num_samples=1500)
    x_n = prediction_draws(nuts.posterior, users, items)
    x_g = prediction_draws(gibbs.posterior, users, items)
    se = np.sqrt(
        x_n[0].var(0) / np.asarray(effective_sample_size(x_n)) + x_g[0].var(0) / np.asarray(effective_sample_size(x_g))
    )
    z = (x_n.mean((0, 1)) - x_g.mean((0, 1))) / se
    assert nuts.r_hat_max < 1.1 and int(nuts.info.num_divergences.sum()) <= 5  # rare funnel divergences
    assert np.mean(np.abs(z)) < 1.3 and np.max(np.abs(z)) < 5.0, z


@pytest.mark.parametrize(
    "fit, kwargs",
    [
        (fit_svi, dict(rank=0)),
        (fit_svi, dict(guide="full")),
        (fit_svi, dict(hyper="lkj")),
        (fit_svi, dict(batch_size=0)),
        (fit_svi, dict(learning_rate=0.0)),
        (fit_nuts, dict(num_chains=0)),
        (fit_nuts, dict(num_warmup=-1)),
        (fit_nuts, dict(target_accept_prob=1.5)),
        (fit_nuts, dict(max_users=0)),
    ],
)
def test_bad_options_fail_before_compiling(tiny, fit, kwargs):
    with pytest.raises(ValueError):
        fit(jax.random.PRNGKey(0), tiny, **kwargs)


def test_split_r_hat_flags_chains_that_disagree():
    train, _ = synthetic_preset("tiny")
    p = init_params(jax.random.PRNGKey(0), train.num_users, train.num_items, 2)
    draws = jax.tree.map(lambda x: jnp.stack([x] * 40), p)
    shift = jnp.concatenate([jnp.zeros(20), jnp.ones(20)]) + 0.01 * jax.random.normal(jax.random.PRNGKey(1), (40,))
    from probmf.posterior import Posterior

    post = Posterior(draws._replace(mu=draws.mu + shift), jnp.ones(40))
    r_hat, ess = prediction_diagnostics(post, np.array([0, 1]), np.array([0, 1]), num_chains=2)
    assert np.all(r_hat > 2.0) and ess.shape == (2,)


def test_evaluate_fold_scores_svi_with_its_posterior(tiny):
    assert FITTERS["svi"] is fit_svi and FITTERS["nuts"] is fit_nuts
    options = dict(rank=2, num_epochs=3, batch_size=64, num_samples=6)  # as above: no recompilation
    row = evaluate_fold("svi", tiny, tiny.take(np.arange(100)), options=options, seed=3)
    assert row["num_samples"] == 6 and 0.0 <= row["coverage_90"] <= 1.0


@pytest.mark.skipif(importlib.util.find_spec("arviz") is None, reason="arviz is not installed")
def test_to_inference_data():
    train, _ = synthetic_preset("tiny")
    res = fit_svi(jax.random.PRNGKey(0), train, rank=2, num_epochs=1, batch_size=256, num_samples=8)
    idata = to_inference_data(res.posterior, num_chains=2, users=train.users[:3], items=train.items[:3])
    assert idata.posterior["r_hat"].shape == (2, 4, 3)


@pytest.mark.skipif(importlib.util.find_spec("arviz") is not None, reason="arviz is installed")
def test_to_inference_data_without_arviz_says_so():
    train, _ = synthetic_preset("tiny")
    p = init_params(jax.random.PRNGKey(0), train.num_users, train.num_items, 2)
    from probmf.posterior import Posterior

    post = Posterior(jax.tree.map(lambda x: x[None], p), jnp.ones(1))
    with pytest.raises(ImportError, match="arviz"):
        to_inference_data(post)
