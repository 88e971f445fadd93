"""ArviZ export (`probmf.to_inference_data`) against mathematics: the log-likelihood as scipy
computes it, the replicated ratings against the predictive moments, LOO against the log
predictive density, raw ids, sample stats aligned with the draws, NumPyro's own MCMC."""

import dataclasses
import subprocess
import sys
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats
from scipy.special import logsumexp

import probmf
from probmf.data.ratings import Ratings
from probmf.data.splits import random_split
from probmf.data.synthetic import synthetic_ratings
from probmf.fitters import fit_gibbs
from probmf.inference_data import inference_groups
from probmf.model import MFParams
from probmf.posterior import Posterior, RowPrior, rounded_moments

az = pytest.importorskip("arviz")


def _group_names(idata) -> set:
    """The groups of an arviz < 1 InferenceData or an arviz >= 1 DataTree."""
    return set(idata.children) if hasattr(idata, "children") else set(idata.groups())


def _elpd_and_p(loo) -> tuple[float, float]:
    """(elpd_loo, p_loo) of ``az.loo``'s result, whose fields arviz >= 1 calls elpd and p."""
    return (loo.elpd_loo, loo.p_loo) if hasattr(loo, "elpd_loo") else (loo.elpd, loo.p)


@pytest.fixture(scope="module")
def split():
    """~50 ratings per user and item, rank 1: each prediction's posterior is narrow."""
    ratings, _ = synthetic_ratings(num_users=60, num_items=50, num_ratings=2800, rank=1, noise=0.7, seed=2)
    return random_split(ratings, 0.1, seed=0)


@pytest.fixture(scope="module")
def gibbs(split):
    """A `GibbsResult` of 100 draws, every 2nd sweep after 10 burn-in sweeps."""
    return fit_gibbs(jax.random.PRNGKey(0), split[0], rank=1, num_warmup=10, num_samples=100, thin=2, init_sweeps=3)


def _hand_posterior(S=2000, N=6, M=5, k=2, levels=None, seed=0, priors=False):
    """S independent draws of a small MF model (numpy's generator: nothing to compile);
    ``priors``: cold-row priors, with user N-1 and item M-1 unseen (pairs with them are cold)."""
    rng = np.random.default_rng(seed)
    f32 = lambda a: jnp.asarray(a, jnp.float32)  # noqa: E731
    params = MFParams(
        W=f32(0.5 + 0.3 * rng.normal(size=(S, N, k))),
        U=f32(0.5 + 0.3 * rng.normal(size=(S, M, k))),
        b=f32(0.2 * rng.normal(size=(S, N))),
        c=f32(0.2 * rng.normal(size=(S, M))),
        mu=f32(np.full(S, 3.0)),
    )
    tau = f32(rng.gamma(40.0, 0.1, S))
    prior = seen = None
    if priors:
        cov = f32(np.broadcast_to(0.3 * np.eye(k), (S, k, k)))
        prior = tuple(RowPrior(f32(np.full((S, k), 0.4)), cov, f32(0.1 + 0.05 * rng.uniform(size=S))) for _ in "ui")
        seen = (jnp.arange(N) < N - 1, jnp.arange(M) < M - 1)
    return Posterior(params, tau, None if levels is None else f32(levels), prior, seen)


PAIRS = (np.array([0, 1, 5, 2, 5, -1]), np.array([0, 4, 1, 3, 4, 2]))  # known, cold item, cold user, both, unknown


def test_log_likelihood_is_the_normal_log_density_of_each_draw(gibbs, split):
    test = split[1]
    post = gibbs.posterior
    idata = probmf.to_inference_data(gibbs, test)
    W, U, b, c, mu = (np.asarray(a, np.float64) for a in post.draws)
    seen_u, seen_i = (np.asarray(s) for s in post.seen)
    known = (test.users >= 0) & (test.items >= 0)
    known &= seen_u[np.maximum(test.users, 0)] & seen_i[np.maximum(test.items, 0)]
    u, i = test.users[known], test.items[known]
    assert known.sum() > 100
    mean = np.einsum("spk,spk->sp", W[:, u], U[:, i]) + b[:, u] + c[:, i] + mu[:, None]
    sd = 1.0 / np.sqrt(np.asarray(post.tau, np.float64))[:, None]
    want = scipy.stats.norm.logpdf(test.values[known], mean, sd)
    got = idata.log_likelihood["rating"].values.reshape(post.num_samples, -1)
    np.testing.assert_allclose(got[:, known], want, rtol=2e-5, atol=2e-5)
    np.testing.assert_allclose(idata.posterior["mean_rating"].values.reshape(post.num_samples, -1)[:, known], mean,
                               rtol=1e-5)  # fmt: skip
    np.testing.assert_array_equal(idata.observed_data["rating"].values, test.values)
    assert set(idata.posterior.data_vars) >= {"tau", "mean_rating"} and "r_hat" not in idata.posterior
    assert not {"W", "U", "b", "c"} & set(idata.posterior.data_vars)  # never the raw factors


def test_rounded_log_likelihood_is_the_log_probability_of_the_level():
    levels = np.arange(1.0, 6.0)
    post = _hand_posterior(S=50, levels=levels, priors=True)
    ratings = np.array([1.0, 5.0, 3.0, 2.0, 4.0, 5.0])
    groups = inference_groups(post, (*PAIRS, ratings))
    latent = _hand_posterior(S=50, priors=True)  # the same draws, Gaussian: the latent N(m, v)
    m, v = (np.asarray(a, np.float64) for a in _latent_moments(latent, PAIRS))
    cuts = np.r_[-np.inf, 1.5, 2.5, 3.5, 4.5, np.inf]
    k = np.searchsorted(levels, ratings)
    p = scipy.stats.norm.cdf((cuts[k + 1] - m) / np.sqrt(v)) - scipy.stats.norm.cdf((cuts[k] - m) / np.sqrt(v))
    np.testing.assert_allclose(groups["log_likelihood"]["rating"].values[0], np.log(p), rtol=1e-4)
    mean = jax.vmap(rounded_moments, (0, 0, None))(jnp.asarray(m), 1.0 / jnp.asarray(v), jnp.asarray(levels))[0]
    np.testing.assert_allclose(groups["posterior"]["mean_rating"].values[0], mean, rtol=1e-5)
    assert set(np.unique(groups["posterior_predictive"]["rating"].values)) <= set(levels)


def _latent_moments(post, pairs):
    from probmf.posterior import draw_predictive

    def one(draw):
        params, tau, priors = draw
        return draw_predictive(params, tau, jnp.asarray(pairs[0]), jnp.asarray(pairs[1]), priors, post.seen)

    return jax.lax.map(one, (post.draws, post.tau, post.priors))


@pytest.mark.parametrize("levels", [None, np.arange(1.0, 6.0)])
def test_replicated_ratings_have_the_predictive_moments(levels):
    """Mean and variance over S independent draws' replicated ratings are those of the
    predictive mixture (cold pairs included) within 5 Monte-Carlo standard errors."""
    S = 4000
    post = _hand_posterior(S=S, levels=levels, priors=True)
    rep = inference_groups(post, PAIRS, seed=1)["posterior_predictive"]["rating"].values.reshape(S, -1)
    mean, sd = (np.asarray(a, np.float64) for a in post.predictive(*PAIRS))
    centred = rep - mean
    np.testing.assert_array_less(np.abs(centred.mean(0)), 5 * sd / np.sqrt(S))
    var_se = np.sqrt(np.var(centred**2, axis=0) / S)
    np.testing.assert_array_less(np.abs(np.mean(centred**2, 0) - sd**2), 5 * var_se)


def test_loo_is_the_log_predictive_density_less_each_ratings_spread(gibbs, split):
    """On held-out ratings the elpd is the log predictive density sum_p log mean_s p(r_p | s)
    (lppd); PSIS-LOO reweights the draws as if each rating were left out, so elpd_loo = lppd
    - p_loo, and p_loo is about sum_p var_s log p(r_p | s) (the cumulant expansion of
    log E e^l + log E e^-l), small where each prediction's posterior is narrow."""
    idata = probmf.to_inference_data(gibbs, split[1])
    S = gibbs.posterior.num_samples
    ll = idata.log_likelihood["rating"].values.reshape(S, -1)
    lppd = float(np.sum(logsumexp(ll, axis=0) - np.log(S)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # a few Pareto k above ArviZ's threshold
        loo = az.loo(idata, pointwise=True)
    assert np.mean(np.asarray(loo.pareto_k) < 0.7) > 0.9 and loo.n_data_points == len(split[1])
    elpd_loo, p_loo = _elpd_and_p(loo)
    assert elpd_loo + p_loo == pytest.approx(lppd, rel=1e-9)
    spread = float(np.sum(np.var(ll, axis=0)))
    assert p_loo == pytest.approx(spread, rel=0.25) and spread < 0.15 * abs(lppd)


def test_coords_carry_raw_ids_and_unknown_ones_are_marked():
    rng = np.random.default_rng(0)
    users, items = rng.choice(["ann", "bob", "cy", "dee"], 300), rng.choice([101, 205, 333, 478, 590], 300)
    ratings = Ratings.from_raw(users, items, rng.integers(1, 6, 300).astype(float))
    train, test = random_split(ratings, 0.2, seed=1)
    post = _hand_posterior(S=4, N=4, M=5)
    idata = probmf.to_inference_data(post, test)
    assert list(idata.posterior["user"].values) == list(test.raw_users())
    assert list(idata.log_likelihood["item"].values) == list(test.raw_items())
    assert idata.posterior["mean_rating"].dims == ("chain", "draw", "pair")
    unknown = dataclasses.replace(test, users=np.r_[-1, test.users[1:]])
    coords = inference_groups(post, unknown)["observed_data"]
    assert coords["user"].values[0] == "" and coords["item"].values[0] == test.raw_items()[0]


def test_gibbs_sample_stats_are_the_kept_sweeps(gibbs):
    """thin=2 after 10 burn-in sweeps: sweeps 11, 13, ..., 209 are the draws; with or without
    the fit's options (a bare `GibbsResult` finds them by their tau)."""
    kept = 10 + 2 * np.arange(1, 101) - 1
    for config in (None, {"num_warmup": 10, "thin": 2}):
        stats = inference_groups(gibbs) if config is None else _with_config(gibbs, config)
        np.testing.assert_array_equal(stats["sample_stats"]["tau"].values[0], gibbs.trace.tau[kept])
        np.testing.assert_array_equal(stats["sample_stats"]["train_rmse"].values[0], gibbs.trace.train_rmse[kept])
        np.testing.assert_array_equal(stats["warmup_sample_stats"]["tau"].values[0], gibbs.trace.tau[:10])
    idata = probmf.to_inference_data(gibbs)
    np.testing.assert_allclose(idata.posterior["tau"].values[0], gibbs.posterior.tau)
    assert _group_names(idata) == {"posterior", "sample_stats", "warmup_sample_stats"}
    assert {"user_bias_var", "item_factor_var"} <= set(idata.posterior.data_vars)


def _with_config(result, config):
    from probmf.fitters.run import FitResult

    return inference_groups(FitResult(result, result, config, 0.0))


def test_point_fits_are_one_draw_and_svi_keeps_its_elbo(split):
    from probmf.fitters.svi import SVIResult
    from probmf.predictor import PointPredictor

    test = split[1]
    draws = _hand_posterior(S=4, N=60, M=50)
    params = jax.tree.map(lambda a: a[0], draws.draws)
    point = probmf.to_inference_data(PointPredictor(params, 0.8), test)
    mean = np.asarray(params.predict(jnp.asarray(test.users), jnp.asarray(test.items)), np.float64)
    np.testing.assert_allclose(point.log_likelihood["rating"].values[0, 0],
                               scipy.stats.norm.logpdf(test.values, mean, 0.8), rtol=1e-5, atol=1e-5)  # fmt: skip
    np.testing.assert_allclose(point.posterior["tau"].values, [[1.0 / 0.8**2]])
    assert point.posterior_predictive["rating"].shape == (1, 1, len(test))
    elbo = np.array([-30.0, -20.0, -15.0])
    svi = probmf.to_inference_data(SVIResult(draws, elbo, {}))
    np.testing.assert_array_equal(svi.sample_stats["elbo"].values, elbo)
    assert svi.sample_stats["elbo"].dims == ("epoch",)


def test_plot_ppc_draws_the_replicated_ratings(gibbs, split):
    pytest.importorskip("matplotlib", reason="az.plot_ppc needs matplotlib")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    idata = probmf.to_inference_data(gibbs, split[1])
    with warnings.catch_warnings():
        # ArviZ 0.23's own call into matplotlib >= 3.11 (normalize_kwargs), not this export.
        warnings.filterwarnings("ignore", "Passing a dict or None as alias_mapping", DeprecationWarning)
        if hasattr(idata, "children"):  # arviz >= 1
            az.plot_ppc_dist(idata, num_samples=5, backend="matplotlib")
        else:
            az.plot_ppc(idata, num_pp_samples=5)
    plt.close("all")


def test_groups_are_plain_datasets_an_arviz_1_datatree_takes(gibbs, split):
    xr = pytest.importorskip("xarray")
    if not hasattr(xr, "DataTree"):
        pytest.skip("xarray.DataTree (what arviz >= 1 reads) needs xarray >= 2024.10")
    groups = inference_groups(gibbs, split[1])
    assert all(isinstance(g, xr.Dataset) for g in groups.values())
    tree = xr.DataTree.from_dict(groups)
    assert set(tree.children) == set(groups)
    np.testing.assert_array_equal(tree["log_likelihood"]["rating"].values, groups["log_likelihood"]["rating"].values)


def test_bad_input_is_refused_clearly(gibbs, split):
    from probmf.fitters.gibbs import GibbsResult
    from probmf.posterior import PredictiveSummary
    from probmf.predictor import PointPredictor

    test = split[1]
    zeros = jnp.zeros(len(test))
    summary = GibbsResult(None, gibbs.trace, PredictiveSummary(test.users, test.items, 5.0, zeros, zeros, zeros), 1)
    with pytest.raises(ValueError, match="keep_draws=True"):
        probmf.to_inference_data(summary, test)
    post = _hand_posterior(S=6)
    with pytest.raises(ValueError, match="divisor"):
        probmf.to_inference_data(post, num_chains=4)
    with pytest.raises(TypeError, match="Ratings or a"):
        probmf.to_inference_data(post, [1, 2])
    with pytest.raises(TypeError, match="cannot export"):
        probmf.to_inference_data(np.zeros(3))
    with pytest.raises(ValueError, match="plug-in noise"):
        probmf.to_inference_data(PointPredictor(jax.tree.map(lambda a: a[0], post.draws), float("nan")), PAIRS)


def test_to_inference_data_without_arviz_says_so(monkeypatch):
    monkeypatch.setitem(sys.modules, "arviz", None)
    with pytest.raises(ImportError, match=r"to_inference_data needs arviz: pip install arviz"):
        probmf.to_inference_data(_hand_posterior(S=2))


def test_importing_probmf_imports_no_arviz():
    code = (
        "import sys, probmf, probmf.inference_data, probmf.diagnostics; probmf.to_inference_data; "
        "assert 'arviz' not in sys.modules and 'xarray' not in sys.modules, 'imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


@pytest.mark.slow
def test_nuts_exposes_its_mcmc_for_from_numpyro(split, tmp_path):
    from probmf.fitters.run import predictor_of, resolve_options
    from probmf.persistence import FittedModel, load_model, save_model

    train, test = split
    options = resolve_options("nuts", dict(rank=2, num_warmup=10, num_samples=8, num_chains=2, max_tree_depth=3))
    res = probmf.FITTERS["nuts"](jax.random.PRNGKey(1), train, **options)
    native = az.from_numpyro(res.mcmc)
    assert native.posterior["tau"].shape == (2, 8) and "diverging" in native.sample_stats
    idata = probmf.to_inference_data(res, test)
    stats = idata.sample_stats
    np.testing.assert_array_equal(stats["diverging"].values.sum(axis=1), res.info.num_divergences)
    np.testing.assert_allclose(stats["step_size"].values[:, -1], res.info.step_size)
    np.testing.assert_allclose(stats["tree_depth"].values.mean(axis=1), res.info.mean_tree_depth, rtol=1e-6)
    np.testing.assert_allclose(idata.posterior["tau"].values, native.posterior["tau"].values, rtol=1e-6)
    # A saved model leaves the MCMC object out and still exports (its step sizes alone).
    save_model(tmp_path / "m", FittedModel.from_training("nuts", options, predictor_of("nuts", res, train), train))
    back = load_model(tmp_path / "m")
    assert back.fitted.mcmc is None
    again = probmf.to_inference_data(back, test)
    assert set(again.sample_stats.data_vars) == {"step_size"}
    np.testing.assert_allclose(again.log_likelihood["rating"].values, idata.log_likelihood["rating"].values)


@pytest.mark.slow
def test_every_fit_through_probmf_fit_exports(split):
    train, test = split
    fits = {
        "gibbs": probmf.fit("gibbs", train, rank=2, num_warmup=4, num_samples=8, init_sweeps=3, implicit=True),
        "svi": probmf.fit("svi", train, rank=2, num_epochs=2, batch_size=128, num_samples=6),
        "als": probmf.fit("als", train, rank=2, num_sweeps=3),
    }
    for name, res in fits.items():
        idata = probmf.to_inference_data(res, test)
        S = res.predictor.num_samples
        assert idata.log_likelihood["rating"].shape == (1, S, len(test)), name
        assert np.all(np.isfinite(idata.log_likelihood["rating"].values)), name
    elbo = probmf.to_inference_data(fits["svi"]).sample_stats["elbo"].values
    np.testing.assert_array_equal(elbo, fits["svi"].info.elbo)
    point = probmf.to_inference_data(fits["als"], test)
    mean = np.asarray(fits["als"].predictor.predict(test.users, test.items), np.float64)
    sd = fits["als"].predictor.noise_sd
    np.testing.assert_allclose(point.log_likelihood["rating"].values[0, 0],
                               scipy.stats.norm.logpdf(test.values, mean, sd), rtol=1e-5, atol=1e-5)  # fmt: skip
    np.testing.assert_allclose(point.posterior["tau"].values, [[1.0 / sd**2]], rtol=1e-6)
