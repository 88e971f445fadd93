"""SVI's two engines: the hand-written mean-field step (`probmf.fitters.meanfield`) against
NumPyro's own `SVI` with `Trace_ELBO` and `AutoNormal` (``fit_svi(engine="numpyro")``)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import pytest
from numpyro.infer import Trace_ELBO

from probmf.checkpoint import fit_checkpoint
from probmf.data.splits import random_split
from probmf.data.synthetic import synthetic_ratings
from probmf.fitters.bayes_model import mf_model
from probmf.fitters.meanfield import meanfield_elbo
from probmf.fitters.run import resolve_options
from probmf.fitters.svi import SVIConfig, fit_svi, make_guide, prepare_svi
from probmf.program import RunOptions

_POSITIVE = ("tau", "lam_w", "lam_u", "lam_b", "lam_c")


@pytest.fixture(scope="module")
def small():
    ratings, _ = synthetic_ratings(num_users=40, num_items=30, num_ratings=900, rank=2, noise=0.5, seed=11)
    return random_split(ratings, 0.2, seed=0)


@pytest.mark.slow  # NumPyro traces and compiles the model and guide: 8-13 s here
def test_one_draw_elbo_and_its_gradient_are_trace_elbos_at_the_same_draw(small):
    """At the same guide parameters and the same noise eps (z = loc + scale eps), the hand-written
    estimate log p(r, z) + H[q] and NumPyro's Trace_ELBO estimate log p(r, z) - log q(z) differ by
    H[q] + log q(z) = sum(1 - eps^2) / 2 exactly: a term free of the parameters with mean 0. So
    their expectations are equal and their reparameterised gradients are equal draw by draw: the
    hand-written step is Trace_ELBO's estimator, not an approximation of it. (The ELBO itself is
    not computed in closed form by either; only the entropy is, by the hand-written one.) Hyper
    "gamma", whose sites include "fixed"'s; `mf_log_joint` is checked on both in test_numpyro_mf."""
    train, _ = small
    hyper = "gamma"
    users, items, values = (jnp.asarray(a) for a in (train.users[:200], train.items[:200], train.values[:200]))
    rank = 3
    shapes = {"W": (train.num_users, rank), "U": (train.num_items, rank), "b": (train.num_users,),
              "c": (train.num_items,), "tau": (), "lam_w": (rank,), "lam_u": (rank,), "lam_b": (),
              "lam_c": ()}  # fmt: skip
    keys = iter(jax.random.split(jax.random.PRNGKey(5), 2 * len(shapes)))
    params = {  # the hand-written path's {site: (loc, log scale)}, away from any initial value
        name: (0.5 * jax.random.normal(next(keys), shape), -1.0 + 0.3 * jax.random.normal(next(keys), shape))
        for name, shape in shapes.items()
    }
    data = dict(mu=3.4, num_ratings=float(4 * len(users)))  # the batch as a quarter of the data: scaling checked
    key = jax.random.PRNGKey(6)
    # meanfield_elbo's own noise: site i of sorted(params) draws normal(fold_in(key, i), (size,)).
    eps = {
        name: jax.random.normal(jax.random.fold_in(key, i), (params[name][0].size,)).reshape(params[name][0].shape)
        for i, name in enumerate(sorted(params))
    }

    def ours(params):
        return meanfield_elbo(params, key, users, items, values, hyper=hyper, **data)

    model = functools.partial(mf_model, num_users=train.num_users, num_items=train.num_items, rank=rank, hyper=hyper)

    def theirs(np_params):
        # The guide engine="numpyro" runs, made inside the traced function: AutoNormal sets up
        # its sites at its first call, far faster traced than run op by op.
        guide = make_guide(model, "normal")
        # AutoNormal's draw at the same eps, as a function of its parameters (reparameterised):
        # z = loc + scale eps, then its support's bijection (exp for the positive sites).
        draw = {}
        for name in shapes:
            z = np_params[f"{name}_auto_loc"] + np_params[f"{name}_auto_scale"] * eps[name]
            draw[name] = jnp.exp(z) if name in _POSITIVE else z
        q = numpyro.handlers.substitute(guide, data=draw)
        return -Trace_ELBO().loss(jax.random.PRNGKey(7), np_params, model, q, users, items, values, **data)

    np_params = {}
    for name, (loc, log_s) in params.items():
        np_params[f"{name}_auto_loc"], np_params[f"{name}_auto_scale"] = loc, jnp.exp(log_s)
    ours_value, ours_grad = jax.jit(jax.value_and_grad(ours))(params)
    theirs_value, theirs_grad = jax.jit(jax.value_and_grad(theirs))(np_params)
    gap = sum(0.5 * float(jnp.sum(1.0 - jnp.square(e))) for e in eps.values())
    scale = abs(float(ours_value))
    np.testing.assert_allclose(float(ours_value) - float(theirs_value), gap, atol=2e-6 * scale + 1e-3)
    for name, (g_loc, g_log_s) in ours_grad.items():
        # d/d log s = s d/d s (the chain rule between the two parameterisations of the scale)
        want_loc = theirs_grad[f"{name}_auto_loc"]
        want_log_s = theirs_grad[f"{name}_auto_scale"] * np_params[f"{name}_auto_scale"]
        tol = 1e-4 * float(jnp.max(jnp.abs(want_loc))) + 1e-4
        np.testing.assert_allclose(np.asarray(g_loc), np.asarray(want_loc), atol=tol, err_msg=name)
        tol = 1e-4 * float(jnp.max(jnp.abs(want_log_s))) + 1e-4
        np.testing.assert_allclose(np.asarray(g_log_s), np.asarray(want_log_s), atol=tol, err_msg=name)


@pytest.mark.slow
def test_both_engines_fit_alike(small, tmp_path):
    """A short fit with each engine on the same data: the same model and estimator reach about
    the same ELBO and held-out RMSE (they differ in noise and in the scale's parameterisation,
    so only about). The ELBO trace is each engine's one-draw estimate, averaged per epoch."""
    train, test = small
    options = dict(rank=2, num_epochs=200, batch_size=60, num_samples=20)  # 2,400 steps: both near their optimum
    fits = {e: fit_svi(jax.random.PRNGKey(0), train, engine=e, checkpoint=str(tmp_path / e), **options)
            for e in ("fast", "numpyro")}  # fmt: skip
    # The NumPyro engine's state is another pytree: another run, under another checkpoint name.
    names = {e: [p.name for p in (tmp_path / e).glob("*.npz")] for e in fits}
    assert len(names["fast"]) == len(names["numpyro"]) == 1 and names["fast"] != names["numpyro"]
    rmse, elbo = {}, {}
    for e, res in fits.items():
        mean, _ = res.predictive(jnp.asarray(test.users), jnp.asarray(test.items))
        rmse[e] = float(np.sqrt(np.mean((np.asarray(mean) - test.values) ** 2)))
        elbo[e] = float(np.mean(res.elbo[-5:]))  # the last epochs' mean: less noise than one epoch
        assert res.elbo[-1] > res.elbo[0] + 0.5 * abs(res.elbo[0])  # each fit climbs from its start
    # Both fits fit: the noise sd is 0.5, and predicting the mean alone would be far worse.
    baseline = float(np.sqrt(np.mean((np.mean(train.values) - test.values) ** 2)))
    assert max(rmse.values()) < 0.5 * (0.5 + baseline), (rmse, baseline)
    # Seeds move either engine's RMSE by about 0.01 and its final ELBO by about 1%.
    assert abs(rmse["fast"] - rmse["numpyro"]) < 0.03, rmse
    assert abs(elbo["fast"] - elbo["numpyro"]) < 0.03 * abs(elbo["fast"]), elbo
    assert set(fits["fast"].params) == set(fits["numpyro"].params)  # AutoNormal's names on both


def test_the_default_engine_keeps_older_checkpoints_fingerprint(small, tmp_path):
    """A default fit checkpoints under the name it had before the engine option existed (the
    program is prepared, not run; `test_both_engines_fit_alike` checks the NumPyro engine's
    differs)."""
    train, _ = small
    key = jax.random.PRNGKey(2)
    config = SVIConfig(rank=2, num_epochs=1, batch_size=240, num_samples=2)
    run = RunOptions(checkpoint=str(tmp_path), checkpoint_every=1)
    old = dict(rank=2, guide="normal", hyper="gamma", num_epochs=1, batch_size=240, learning_rate=0.05,
               num_samples=2, guide_rank=4, init_scale=0.1, devices=1)  # fmt: skip
    want = fit_checkpoint(tmp_path, 1, "svi", key, train, old).path
    assert prepare_svi(key, train, config.validate(run), run).checkpoint.path == want


def test_engine_is_checked_and_is_an_svi_option(small):
    with pytest.raises(ValueError, match="engine must be one of"):
        fit_svi(jax.random.PRNGKey(0), small[0], engine="pyro")
    assert resolve_options("svi", {"engine": "numpyro"})["engine"] == "numpyro"
    with pytest.raises(ValueError, match="option 'engine' does not apply to model 'als'"):
        resolve_options("als", {"engine": "numpyro"})


def test_cli_engine_flag_reaches_the_fitter(monkeypatch, capsys):
    import probmf.evaluate
    from probmf.cli import main

    seen = []

    def fake_fold(model, train, test, *, options, **kwargs):
        seen.append((model, options))
        return {"model": model}

    monkeypatch.setattr(probmf.evaluate, "evaluate_fold", fake_fold)
    for flag in ("--engine", "--svi-engine"):
        argv = ["evaluate", "--data", "synthetic:tiny", "--split", "holdout", "--model", "svi", flag, "numpyro"]
        assert main([*argv, "--json"]) == 0
    assert seen == [("svi", {"engine": "numpyro"})] * 2
    capsys.readouterr()
