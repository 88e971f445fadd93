"""The NumPyro model against the MAP objective, and its NUTS and SVI fitters on synthetic data."""

import functools
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
import scipy.special
from numpyro.diagnostics import effective_sample_size
from numpyro.infer import Trace_ELBO
from numpyro.infer.util import log_density

from probmf.data.synthetic import synthetic_preset, synthetic_ratings
from probmf.diagnostics import prediction_diagnostics, prediction_draws, tail_ess, to_inference_data
from probmf.evaluate import evaluate_fold
from probmf.fitters import FITTERS
from probmf.fitters.bayes_model import mf_model
from probmf.fitters.gibbs import fit_gibbs
from probmf.fitters.meanfield import meanfield_elbo, mf_log_joint
from probmf.fitters.nuts import fit_nuts
from probmf.fitters.svi import default_batch_size, fit_svi, make_guide
from probmf.metrics import interval_scores
from probmf.model import MFParams, init_params
from probmf.objectives import Hyperpriors, Priors, map_loss
from probmf.posterior import Posterior

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny():
    ratings, _ = synthetic_ratings(num_users=30, num_items=20, num_ratings=300, rank=2, noise=0.5, seed=7)
    return ratings


def test_fixed_variant_log_density_is_minus_map_loss(tiny):
    """log p(R, theta | lam, tau) = -map_loss(theta; sigma = tau^-1/2) + log Gamma(tau | a, b),
    so differences between parameter settings are equal and so is the constant."""
    r = tiny
    users, items, values = jnp.asarray(r.users), jnp.asarray(r.items), jnp.asarray(r.values)
    priors = Hyperpriors(lam=3.0, lam_bias=0.7)
    kwargs = dict(num_users=r.num_users, num_items=r.num_items, rank=2, mu=3.4, hyper="fixed", hyperpriors=priors)
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


@pytest.mark.slow
def test_svi_is_deterministic_and_fills_a_posterior(tiny):
    a = fit_svi(jax.random.PRNGKey(3), tiny, rank=2, num_epochs=3, batch_size=64, num_samples=6)
    b = fit_svi(jax.random.PRNGKey(3), tiny, rank=2, num_epochs=3, batch_size=64, num_samples=6)
    for x, y in zip(jax.tree.leaves(a.posterior), jax.tree.leaves(b.posterior), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    np.testing.assert_array_equal(a.elbo, b.elbo)
    assert a.posterior.draws.W.shape == (6, 30, 2) and a.posterior.tau.shape == (6,) and a.elbo.shape == (3,)
    mean, sd = a.predictive(jnp.asarray(tiny.users[:5]), jnp.asarray(tiny.items[:5]))
    assert mean.shape == sd.shape == (5,) and bool(jnp.all(sd > 0))


@pytest.mark.slow
def test_nuts_reports_diagnostics(tiny):
    """(Determinism for a fixed key: tests/test_fitters_contract.py.)"""
    opts = dict(rank=2, num_warmup=10, num_samples=8, num_chains=1, max_tree_depth=3, num_check_pairs=7)
    a = fit_nuts(jax.random.PRNGKey(5), tiny, **opts)
    assert a.posterior.num_samples == 8 and a.rank == 2
    assert a.info.r_hat.shape == a.info.ess.shape == (7,) and a.info.num_divergences.shape == (1,)
    assert np.isfinite(a.r_hat_max) and a.ess_min > 0 and np.all(a.info.step_size > 0)


@pytest.mark.slow
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


@pytest.mark.slow
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
        (fit_svi, dict(devices=0)),
        (fit_svi, dict(batch_size=64, devices=3)),  # 64 ratings do not split over 3 devices
        (fit_svi, dict(checkpoint_every=0)),
        (fit_svi, dict(checkpoint="unused", checkpoint_every=1.5)),
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
    """Two chains whose draws rise by 0.01 from 0 and from 1: the four split halves hold ranks
    1-10, 11-20, 21-30 and 31-40, so the rank-normalised R-hat is the classic one of their
    normal scores z_r = Phi^-1((r - 3/8) / 40.25): sqrt((B / W + n - 1) / n), n = 10 (the
    folded, tail R-hat is lower: its halves pair up)."""
    train, _ = synthetic_preset("tiny")
    p = init_params(jax.random.PRNGKey(0), train.num_users, train.num_items, 2)
    draws = jax.tree.map(lambda x: jnp.stack([x] * 40), p)
    shift = jnp.concatenate([jnp.zeros(20), jnp.ones(20)]) + 0.01 * jnp.tile(jnp.arange(20.0), 2)
    from probmf.posterior import Posterior

    post = Posterior(draws._replace(mu=draws.mu + shift), jnp.ones(40))
    r_hat, ess = prediction_diagnostics(post, np.array([0, 1]), np.array([0, 1]), num_chains=2)
    z = scipy.special.ndtri((np.arange(1, 41) - 0.375) / 40.25).reshape(4, 10)
    between, within = 10 * np.var(z.mean(axis=1), ddof=1), np.mean(np.var(z, axis=1, ddof=1))
    np.testing.assert_allclose(r_hat, np.sqrt((between / within + 9) / 10), rtol=1e-4)  # float32 draws
    assert np.all(r_hat > 3.0) and ess.shape == (2,)


def test_evaluate_fold_scores_svi_with_its_posterior(tiny):
    assert FITTERS["svi"] is fit_svi and FITTERS["nuts"] is fit_nuts
    options = dict(rank=2, num_epochs=3, batch_size=64, num_samples=6)  # as above: no recompilation
    row = evaluate_fold("svi", tiny, tiny.take(np.arange(100)), options=options, seed=3)
    assert row["num_samples"] == 6 and 0.0 <= row["coverage_90"] <= 1.0


def _ar1_posterior(num_chains=4, draws=250, phi=0.5, shift=0.0, seed=0):
    """A hand-made `Posterior` whose predictions are AR(1) chains (chain c offset by c * shift)."""
    rng = np.random.default_rng(seed)
    S, N, M = num_chains * draws, 6, 5
    b = np.zeros((num_chains, draws, N))
    for t in range(1, draws):
        b[:, t] = phi * b[:, t - 1] + rng.normal(size=(num_chains, N))
    b += shift * np.arange(num_chains)[:, None, None]
    params = MFParams(
        W=jnp.zeros((S, N, 2)),
        U=jnp.zeros((S, M, 2)),
        b=jnp.asarray(b.reshape(S, N), jnp.float32),
        c=jnp.zeros((S, M)),
        mu=jnp.full((S,), 3.5),
    )
    return Posterior(params, jnp.asarray(rng.gamma(20.0, 0.1, S), jnp.float32))


def _group_names(idata) -> set:
    """The groups of an arviz < 1 InferenceData or an arviz >= 1 DataTree."""
    return set(idata.children) if hasattr(idata, "children") else set(idata.groups())


def test_to_inference_data_groups_dims_and_shapes():
    pytest.importorskip("arviz")
    post = _ar1_posterior(num_chains=4, draws=25)
    users, items = np.array([0, 1, 5]), np.array([0, 4, 2])
    idata = to_inference_data(post, (users, items, np.array([3.0, 4.5, 1.0])), num_chains=4)
    assert _group_names(idata) == {"posterior", "posterior_predictive", "log_likelihood", "observed_data"}
    mean = idata.posterior["mean_rating"]
    assert mean.dims == ("chain", "draw", "pair") and mean.shape == (4, 25, 3)
    assert idata.posterior["tau"].dims == ("chain", "draw") and idata.posterior["tau"].shape == (4, 25)
    assert set(idata.posterior.data_vars) == {"tau", "mean_rating"}  # never the raw factors
    assert idata.observed_data["rating"].dims == ("pair",)
    np.testing.assert_array_equal(idata.observed_data["rating"].values, [3.0, 4.5, 1.0])
    # chain-major: chain c holds draws c * 25 ... c * 25 + 24
    np.testing.assert_allclose(idata.posterior["tau"].values.ravel(), np.asarray(post.tau), rtol=1e-6)
    np.testing.assert_allclose(mean.values, prediction_draws(post, users, items, num_chains=4))
    only_tau = to_inference_data(post, num_chains=2)
    assert _group_names(only_tau) == {"posterior"} and only_tau.posterior["tau"].shape == (2, 50)
    with pytest.raises(ValueError, match="divisor"):
        to_inference_data(post, num_chains=3)


@pytest.mark.parametrize("shift", [0.0, 1.5])
def test_arviz_rhat_and_ess_agree_with_prediction_diagnostics(shift):
    """`prediction_diagnostics` computes ArviZ's defaults, the rank-normalised split R-hat
    and the bulk ESS (Vehtari et al. 2021), in numpy, and `tail_ess` its tail ESS: equal to
    float rounding."""
    az = pytest.importorskip("arviz")
    post = _ar1_posterior(shift=shift)
    users, items = np.arange(6), np.array([0, 1, 2, 3, 4, 0])
    idata = to_inference_data(post, (users, items), num_chains=4)
    r_hat, ess = prediction_diagnostics(post, users, items, num_chains=4)
    np.testing.assert_allclose(az.rhat(idata, var_names=["mean_rating"])["mean_rating"].values, r_hat, rtol=1e-9)
    np.testing.assert_allclose(az.ess(idata, var_names=["mean_rating"])["mean_rating"].values, ess, rtol=1e-9)
    tail = tail_ess(prediction_draws(post, users, items, num_chains=4))
    # Vehtari et al.'s 5% and 95% quantiles: arviz >= 1 defaults to its ci_prob (0.89) instead.
    prob = {"prob": 0.95} if hasattr(idata, "children") else {}
    az_tail = az.ess(idata, var_names=["mean_rating"], method="tail", **prob)["mean_rating"].values
    np.testing.assert_allclose(az_tail, tail, rtol=1e-9)
    if not shift:  # a Gaussian AR(1)'s tail indicators are less autocorrelated than the chain itself
        assert np.all((tail > ess) & (tail < 1000))
    if shift:
        assert np.all(r_hat > 1.5)  # chains that disagree are flagged
    else:
        # AR(1), phi = 0.5: ESS ~ S (1 - phi) / (1 + phi) = 333 (ranks barely change it)
        assert np.all(r_hat < 1.05) and np.all(np.abs(ess - 1000 / 3) < 100)


def test_svi_posterior_exports_to_arviz(tiny):
    pytest.importorskip("arviz")
    res = fit_svi(jax.random.PRNGKey(3), tiny, rank=2, num_epochs=3, batch_size=64, num_samples=6)
    idata = to_inference_data(res.posterior, (tiny.users[:3], tiny.items[:3]), num_chains=2)
    assert idata.posterior["mean_rating"].shape == (2, 3, 3)
    assert np.all(np.isfinite(idata.posterior["mean_rating"].values))


# ---- the hand-written mean-field SVI step, checkpoints and devices ------------------------------


@pytest.mark.parametrize("hyper", ["fixed", "gamma"])
def test_mf_log_joint_is_numpyros_log_density_of_mf_model(tiny, hyper):
    """The hand-written log joint equals NumPyro's log density of `mf_model` at the same values,
    plus log x for each positive site x (the Jacobian of z = log x), minibatch scaling included."""
    r = tiny
    users, items, values = (jnp.asarray(a) for a in (r.users[:50], r.items[:50], r.values[:50]))
    keys = iter(jax.random.split(jax.random.PRNGKey(1), 12))
    z = {
        "W": 0.5 * jax.random.normal(next(keys), (r.num_users, 3)),
        "U": 0.5 * jax.random.normal(next(keys), (r.num_items, 3)),
        "b": 0.3 * jax.random.normal(next(keys), (r.num_users,)),
        "c": 0.3 * jax.random.normal(next(keys), (r.num_items,)),
        "tau": jnp.float32(0.4),
    }
    positive = ["tau"]
    if hyper == "gamma":
        z.update(lam_w=jnp.array([0.1, -0.3, 0.7]), lam_u=jnp.array([0.2, 0.0, -0.5]), lam_b=jnp.float32(0.3))
        z["lam_c"] = jnp.float32(-0.2)
        positive += ["lam_w", "lam_u", "lam_b", "lam_c"]
    # Every constant off its default, the bias precisions' apart from the factors': a mix-up fails.
    priors = Hyperpriors(lam=3.0, lam_bias=0.7, a_lam=1.5, b_lam=0.8, a_bias=2.5, b_bias=0.6, a_tau=2.0, b_tau=1.3)
    kwargs = dict(num_users=r.num_users, num_items=r.num_items, rank=3, mu=3.4, hyper=hyper, hyperpriors=priors)
    x = {k: jnp.exp(v) if k in positive else v for k, v in z.items()}
    expected = float(log_density(mf_model, (users, items, values), {**kwargs, "num_ratings": 300}, x)[0])
    expected += sum(float(jnp.sum(z[k])) for k in positive)
    got = mf_log_joint(z, users, items, values, mu=3.4, num_ratings=300, hyper=hyper, hyperpriors=priors)
    np.testing.assert_allclose(float(got), expected, rtol=1e-5)


_PARTICLES = 1000


@pytest.mark.slow
def test_meanfield_elbo_estimates_numpyros_trace_elbo(tiny):
    """Averaged over draws, the hand-written estimate is NumPyro's Trace_ELBO with AutoNormal
    at the same variational parameters."""
    r = tiny
    users, items, values = (jnp.asarray(a) for a in (r.users, r.items, r.values))
    model_kwargs = dict(num_users=r.num_users, num_items=r.num_items, rank=2, hyper="gamma")
    shapes = {"W": (r.num_users, 2), "U": (r.num_items, 2), "b": (r.num_users,), "c": (r.num_items,), "tau": ()}
    shapes.update(lam_w=(2,), lam_u=(2,), lam_b=(), lam_c=())
    keys = iter(jax.random.split(jax.random.PRNGKey(2), 2 * len(shapes)))
    params = {
        name: (0.5 * jax.random.normal(next(keys), shape), -1.5 + 0.3 * jax.random.normal(next(keys), shape))
        for name, shape in shapes.items()
    }
    data = dict(mu=3.4, num_ratings=900.0)  # the 300 ratings as a third of the data: scaling checked too
    ours = jax.vmap(lambda k: meanfield_elbo(params, k, users, items, values, hyper="gamma", **data))(
        jax.random.split(jax.random.PRNGKey(3), _PARTICLES)
    )
    model = functools.partial(mf_model, **model_kwargs)
    guide = make_guide(model, "normal")
    numpyro.handlers.seed(guide, rng_seed=0)(users, items, values, **data)  # set up AutoNormal's sites
    numpyro_params = {}
    for name, (loc, log_s) in params.items():
        numpyro_params[f"{name}_auto_loc"], numpyro_params[f"{name}_auto_scale"] = loc, jnp.exp(log_s)
    elbo = Trace_ELBO(num_particles=_PARTICLES, vectorize_particles=True)
    theirs = -float(elbo.loss(jax.random.PRNGKey(4), numpyro_params, model, guide, users, items, values, **data))
    se = float(jnp.std(ours)) / np.sqrt(_PARTICLES) * np.sqrt(2.0)  # both means carry about this much noise
    assert abs(float(jnp.mean(ours)) - theirs) < 5.0 * se, (float(jnp.mean(ours)), theirs, se)


def test_default_batch_grows_only_for_big_data():
    assert default_batch_size(80_000) == 4096 and default_batch_size(1_000_209) == 4096
    b = default_batch_size(20_000_263)
    assert b > 4096 and 20_000_263 // b <= 256


_KILLED_RUN = """
import os, signal, sys
import jax
import probmf.checkpoint as ckpt
from probmf.data.synthetic import synthetic_ratings
from probmf.fitters.svi import fit_svi

saves, real_save = [], ckpt.save

def save_then_die(checkpoint, step, state):
    real_save(checkpoint, step, state)
    saves.append(step)
    if len(saves) == 2:
        os.kill(os.getpid(), signal.SIGKILL)

ckpt.save = save_then_die
ratings, _ = synthetic_ratings(num_users=30, num_items=20, num_ratings=300, rank=2, noise=0.5, seed=7)
fit_svi(jax.random.PRNGKey(3), ratings, checkpoint=sys.argv[1], **OPTIONS)
"""
_SVI_CKPT_OPTIONS = dict(rank=2, num_epochs=5, batch_size=64, num_samples=6, checkpoint_every=1)


def _pythonpath_env(**extra):
    env = {**os.environ, **extra}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
    return env


@pytest.mark.slow
def test_svi_resumed_after_sigkill_equals_an_uninterrupted_run(tiny, tmp_path):
    folder = tmp_path / "ckpt"
    script = _KILLED_RUN.replace("OPTIONS", repr(_SVI_CKPT_OPTIONS))
    out = subprocess.run(
        [sys.executable, "-c", script, str(folder)], capture_output=True, text=True, timeout=120, env=_pythonpath_env()
    )
    assert out.returncode == -signal.SIGKILL, out.stderr[-2000:]
    (saved,) = folder.glob("svi-*.npz")
    with np.load(saved) as f:
        assert int(f["step"]) == 2  # killed after two of five epochs
    resumed = fit_svi(jax.random.PRNGKey(3), tiny, checkpoint=str(folder), **_SVI_CKPT_OPTIONS)
    with np.load(saved) as f:
        assert int(f["step"]) == 5
    whole = fit_svi(jax.random.PRNGKey(3), tiny, checkpoint=str(tmp_path / "other"), **_SVI_CKPT_OPTIONS)
    np.testing.assert_array_equal(resumed.elbo, whole.elbo)
    assert np.all(np.isfinite(whole.elbo))
    got, want = (jax.tree.leaves((r.posterior, r.params)) for r in (resumed, whole))
    for x, y in zip(got, want, strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    again = fit_svi(jax.random.PRNGKey(3), tiny, checkpoint=str(folder), **_SVI_CKPT_OPTIONS)  # finished: no refit
    np.testing.assert_array_equal(again.elbo, whole.elbo)
    plain = fit_svi(jax.random.PRNGKey(3), tiny, **{**_SVI_CKPT_OPTIONS, "checkpoint_every": 1})
    np.testing.assert_array_equal(plain.elbo, whole.elbo)  # checkpoints change nothing


_DEVICES_RUN = """
import json
import jax, numpy as np
from probmf.data.synthetic import synthetic_ratings
from probmf.fitters.svi import fit_svi

assert jax.device_count() == 4
ratings, _ = synthetic_ratings(num_users=30, num_items=20, num_ratings=300, rank=2, noise=0.5, seed=7)
fits = [fit_svi(jax.random.PRNGKey(3), ratings, rank=2, num_epochs=3, batch_size=64, num_samples=6, devices=d)
        for d in (1, 4)]
diffs = [float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
         for a, b in zip(jax.tree.leaves(fits[0].params), jax.tree.leaves(fits[1].params), strict=True)]
print(json.dumps(dict(elbo=[f.elbo.tolist() for f in fits], max_param_diff=max(diffs),
                      on_devices=len(fits[1].params["W_auto_loc"].sharding.device_set))))
"""


@pytest.mark.slow
def test_svi_on_four_devices_matches_one():
    env = _pythonpath_env(XLA_FLAGS="--xla_force_host_platform_device_count=4")
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(_DEVICES_RUN)], capture_output=True, text=True, timeout=120, env=env
    )
    assert out.returncode == 0, out.stderr[-3000:]
    row = json.loads(out.stdout.splitlines()[-1])
    one, four = row["elbo"]
    # measured: ELBO relative difference ~1.2e-7 (up to ~7e-7), parameters ~6e-8 absolute; ~10x those
    np.testing.assert_allclose(four, one, rtol=5e-6)
    assert row["max_param_diff"] < 1e-6 and row["on_devices"] == 4, row
