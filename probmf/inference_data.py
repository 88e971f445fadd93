"""Any fitted probmf model as ArviZ ``InferenceData``: `to_inference_data`, and `inference_groups`,
its groups as plain xarray Datasets.

For held-out ratings r_p at P pairs (users[p], items[p]) and the S draws of a posterior
(chain-major, C chains of S / C draws; a point fit is one draw of N(r_hat, s^2), s its plug-in
sd), every draw s gives the rating's predictive N(m_sp, v_sp), m and v from
`probmf.posterior.draw_predictive` (v = 1/tau_s, plus a cold row's prior variance), or with a
rounded likelihood the probabilities of the rating levels l_k,

    P_s(l_k) = Phi((c_k - m_sp) / sqrt(v_sp)) - Phi((c_{k-1} - m_sp) / sqrt(v_sp)),

the c_k the midpoints between levels (c_0 = -inf, c_L = inf). The groups, each with dims
(chain, draw, pair) unless said otherwise, and coordinates ``user``, ``item`` along ``pair``
(the RAW ids of the test set's id maps; -1, or "" for string ids, where the id is unknown):

  posterior              tau (chain, draw); mean_rating E_s[r] (m_sp, or sum_k l_k P_s(l_k));
                         the hyper-parameters a fitter keeps, as rotation-free scalars
                         (user_bias_var, item_bias_var: 1/lam_b; user_factor_var,
                         item_factor_var: tr(Lam^-1) / k), where they vary over the draws
  posterior_predictive   rating: one replicated rating per draw and pair, ~ N(m_sp, v_sp) or
                         drawn from the levels
  log_likelihood         rating: log N(r_p | m_sp, v_sp), or log P_s(the level of r_p)
  observed_data          rating (pair)
  sample_stats           Gibbs: tau and train_rmse of each kept sweep (the burn-in sweeps in
                         warmup_sample_stats); NUTS: diverging, tree_depth, n_steps, step_size
                         (step_size alone for a loaded model, which no longer holds the MCMC
                         run); SVI: elbo (epoch,), the mean ELBO of each epoch

Factors are left out on purpose: they are identified only up to rotation (`probmf.diagnostics`).
The log-likelihood is of the ratings given (``test``). For held-out ratings, which the
posterior never saw, the elpd is measured directly: sum_p log mean_s p(r_p | draw s) (the log
predictive density). ``az.loo`` is for the training ratings (``test=train``): PSIS-LOO then
estimates the held-out elpd from the fit alone (Vehtari et al. 2017), by reweighting the draws
as if each rating had been left out; on held-out ratings it would remove about
var_s log p(r_p | draw s) per rating that was never fitted, a pessimistic figure.
The groups are plain xarray Datasets, so ``az.InferenceData(**groups)`` (arviz < 1) and
``xarray.DataTree.from_dict(groups)`` (arviz >= 1) both take them; `to_inference_data` picks
whichever the installed arviz has. Neither arviz nor xarray is imported before it is called.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import jax.scipy.stats
import numpy as np
from jax.scipy.special import log_ndtr
from jax.typing import ArrayLike

from probmf.posterior import Posterior, draw_offsets, draw_predictive

if TYPE_CHECKING:
    from probmf.data.ratings import IdMap, Ratings

__all__ = ["inference_groups", "to_inference_data"]


def to_inference_data(
    result: Any, test: Ratings | tuple | None = None, *, seed: int = 0, num_chains: int | None = None
) -> Any:
    """ArviZ ``InferenceData`` (arviz >= 1: an ``xarray.DataTree``) of a fitted model: the
    groups of `inference_groups` (module docstring).

    Args:
      result: what `probmf.fit` returns (a `FitResult`), a fitter's own result (`GibbsResult`,
        `NUTSResult`, `SVIResult`), a loaded model (`probmf.persistence.FittedModel`), a
        `PointPredictor`, or a bare `Posterior`.
      test: held-out `Ratings` in the training id space (``Ratings.reindex``; a loaded model
        reindexes it into its own), or (users, items[, ratings]) dense indices; None: the
        posterior's tau and hyper-parameters and the sample stats only.
      seed: seeds the replicated ratings of ``posterior_predictive``.
      num_chains: how many chains the draws are (chain-major); None: as the result ran them.

    Needs arviz (not a probmf dependency): raises ImportError without it.

    Example: ``az.loo(probmf.to_inference_data(fit, train))`` with ``fit = probmf.fit("gibbs", train)``.
    """
    try:
        import arviz as az
    except ImportError as err:
        raise ImportError("to_inference_data needs arviz: pip install arviz") from err
    groups = inference_groups(result, test, seed=seed, num_chains=num_chains)
    # By version, not hasattr(az, "InferenceData"): arviz >= 1 answers that name with a warning.
    if int(az.__version__.split(".")[0]) < 1:
        return az.InferenceData(**groups)
    import xarray as xr

    return xr.DataTree.from_dict(groups)  # arviz >= 1 reads a DataTree of these groups


def inference_groups(
    result: Any, test: Ratings | tuple | None = None, *, seed: int = 0, num_chains: int | None = None
) -> dict[str, Any]:
    """The groups of `to_inference_data` (same arguments) as a dict of ``xarray.Dataset``:
    group name -> Dataset (module docstring). Needs xarray (installed with arviz)."""
    try:
        import xarray as xr
    except ImportError as err:
        raise ImportError("inference_groups needs xarray: pip install arviz") from err
    predictor, raw, config, id_maps = _parts(result)
    posterior = predictor if isinstance(predictor, Posterior) else predictor.posterior
    if posterior is None and predictor.num_samples > 1:
        raise ValueError(
            "this posterior kept only the predictive moments of its fit-time pairs (keep_draws=False), not its "
            "draws; refit with keep_draws=True to export it"
        )
    chains = num_chains if num_chains is not None else int(getattr(predictor, "num_chains", 1))
    S = 1 if posterior is None else int(posterior.num_samples)
    if int(chains) != chains or chains < 1 or S % chains:
        raise ValueError(f"num_chains={chains!r} must be a positive divisor of the {S} draws")
    chains, draws = int(chains), S // int(chains)
    base = {"chain": np.arange(chains), "draw": np.arange(draws)}

    def per_draw(a: Any) -> np.ndarray:  # (S, ...) -> (chains, draws, ...), chain-major
        a = np.asarray(a, np.float64)
        return a.reshape(chains, draws, *a.shape[1:])

    if posterior is None:  # a point fit: one draw of N(r_hat, s^2)
        noise_sd = float(predictor.noise_sd)
        variables: dict[str, Any] = {"tau": per_draw([1.0 / noise_sd**2])}
    else:
        variables = {"tau": per_draw(posterior.tau), **{k: per_draw(v) for k, v in _hyper(posterior).items()}}
    groups: dict[str, Any] = {}
    pairs = _test_pairs(test, id_maps)
    pair_coords = {}
    if pairs is not None:
        users, items, ratings, raw_users, raw_items = pairs
        times = getattr(test, "timestamps", None)  # `Ratings` carry them; (users, items) tuples do not
        pair_coords = {"pair": np.arange(users.size), "user": ("pair", raw_users), "item": ("pair", raw_items)}
        key = jax.random.PRNGKey(seed)
        if posterior is None:
            if not math.isfinite(noise_sd) or noise_sd <= 0:
                raise ValueError(f"this point fit has no plug-in noise sd ({noise_sd}); it cannot give a likelihood")
            mean = jnp.asarray(predictor.predict(jnp.asarray(users), jnp.asarray(items)), jnp.float32)
            obs = _observe(key, mean, jnp.full(mean.shape, noise_sd**2, jnp.float32), None, ratings)
            mean_rating, replicated, loglik = (None if a is None else a[None] for a in obs)
        else:
            mean_rating, replicated, loglik = _per_draw(key, posterior, users, items, ratings, times)
        dims = ("chain", "draw", "pair")
        variables["mean_rating"] = (dims, per_draw(mean_rating))
        groups["posterior_predictive"] = xr.Dataset({"rating": (dims, per_draw(replicated))}, {**base, **pair_coords})
        if ratings is not None:
            groups["log_likelihood"] = xr.Dataset({"rating": (dims, per_draw(loglik))}, {**base, **pair_coords})
            groups["observed_data"] = xr.Dataset({"rating": ("pair", np.asarray(ratings, np.float64))}, pair_coords)
    posterior_vars = {k: v if isinstance(v, tuple) else (("chain", "draw"), v) for k, v in variables.items()}
    groups = {"posterior": xr.Dataset(posterior_vars, {**base, **pair_coords}), **groups}
    for name, stats in _sample_stats(raw, config, posterior, chains, draws).items():
        groups[name] = xr.Dataset(stats, {k: v for k, v in base.items() if any(k in d for d, _ in stats.values())})
    return groups


def _parts(result: Any) -> tuple:
    """(predictor, the fitter's own result, its options or None, (user_ids, item_ids) or None)."""
    from probmf.fitters.run import FitResult
    from probmf.persistence import FittedModel

    if isinstance(result, FitResult):
        return result.predictor, result.info, result.config, None
    if isinstance(result, FittedModel):
        return result.fitted, result.fitted, result.options, (result.user_ids, result.item_ids)
    if isinstance(result, Posterior) or hasattr(result, "predictive"):
        return result, result, None, None
    raise TypeError(f"cannot export a {type(result).__name__}: expected a fit result, a Posterior or a saved model")


def _test_pairs(test: Ratings | tuple | None, id_maps: tuple[IdMap, IdMap] | None) -> tuple | None:
    """(users, items, ratings or None, raw users, raw items) of ``test``, or None without it."""
    from probmf.data.ratings import Ratings

    if test is None:
        return None
    if isinstance(test, Ratings):
        if id_maps is not None and (test.user_ids != id_maps[0] or test.item_ids != id_maps[1]):
            test = test.reindex(*id_maps)
        users, items, ratings = test.users, test.items, test.values
        raw = [_raw_ids(m, idx) for m, idx in ((test.user_ids, users), (test.item_ids, items))]
        return users, items, ratings, *raw
    if isinstance(test, tuple) and len(test) in (2, 3):
        users, items = (np.asarray(a, np.int32).reshape(-1) for a in test[:2])
        ratings = None if len(test) == 2 else np.asarray(test[2], np.float32).reshape(-1)
        if users.shape != items.shape or (ratings is not None and ratings.shape != users.shape):
            raise ValueError(f"test users, items and ratings must have one length, got {[len(a) for a in test]}")
        return users, items, ratings, users, items
    raise TypeError(f"test must be Ratings or a (users, items[, ratings]) tuple, got {type(test).__name__}")


def _raw_ids(id_map: IdMap, index: np.ndarray) -> np.ndarray:
    """Raw ids of dense indices; an unknown index (-1) has none kept: -1, or "" for string ids."""
    raw = id_map.raw[np.maximum(index, 0)] if len(id_map) else np.zeros(index.shape, id_map.raw.dtype)
    return np.where(index >= 0, raw, "" if raw.dtype.kind in "US" else -1)


def _hyper(posterior: Posterior) -> dict[str, np.ndarray]:
    """The row priors' rotation-free scalars (S,) that vary over the draws (fixed ones are not parameters)."""
    out = {}
    for side, prior in zip(("user", "item"), posterior.priors or (), strict=False):
        k = prior.cov.shape[-1]
        for name, value in (("bias_var", prior.bias_var), ("factor_var", jnp.trace(prior.cov, axis1=-2, axis2=-1) / k)):
            value = np.asarray(value, np.float64)
            if np.ptp(value) > 0:
                out[f"{side}_{name}"] = value
    return out


def _per_draw(
    key: jax.Array,
    posterior: Posterior,
    users: jax.Array,
    items: jax.Array,
    ratings: jax.Array | None,
    times: ArrayLike | None = None,
) -> tuple[np.ndarray | None, ...]:
    """(mean_rating, replicated rating, log-likelihood or None), each (S, P), draw by draw;
    ``times``: the pairs' timestamps for a posterior with time effects (None: "now")."""
    offset = draw_offsets(posterior, users, items, times)
    users, items = jnp.asarray(users), jnp.asarray(items)
    values = None if ratings is None else jnp.asarray(ratings, jnp.float32)
    # A loaded model holds numpy arrays: as device arrays they can be indexed by traced ids.
    seen, levels, features, time = jax.tree.map(
        jnp.asarray, (posterior.seen, posterior.levels, posterior.features, posterior.time)
    )

    def one(draw: tuple) -> tuple[jax.Array, jax.Array, jax.Array | None]:
        s, params, tau, priors, time = draw
        # The latent predictive (no levels); `_observe` rounds it where the likelihood does.
        mean, var = draw_predictive(params, tau, users, items, priors, seen, None, features, offset(time))
        return _observe(jax.random.fold_in(key, s), mean, var, levels, values)

    S = posterior.num_samples
    out = jax.lax.map(one, (jnp.arange(S), posterior.draws, posterior.tau, posterior.priors, time))
    return tuple(None if a is None else np.asarray(a) for a in out)


def _observe(
    key: jax.Array, mean: jax.Array, var: jax.Array, levels: jax.Array | None, ratings: jax.Array | None
) -> tuple[jax.Array, jax.Array, jax.Array | None]:
    """One draw's (E[r], a replicated r, log p(ratings) or None), each (P,), for the latent
    N(mean, var): Gaussian, or rounded to ``levels`` (module docstring)."""
    sd = jnp.sqrt(var)
    if levels is None:
        replicated = mean + sd * jax.random.normal(key, mean.shape)
        if ratings is None:
            return mean, replicated, None
        return mean, replicated, jax.scipy.stats.norm.logpdf(ratings, mean, sd)
    cuts = 0.5 * (levels[1:] + levels[:-1])
    edges = jnp.concatenate([jnp.array([-jnp.inf]), cuts, jnp.array([jnp.inf])])
    z = (edges[None, :] - mean[:, None]) / sd[:, None]  # (P, L + 1)
    log_p = _log_interval(z[:, :-1], z[:, 1:])  # (P, L): log P(level k)
    expected = jnp.exp(log_p) @ levels
    replicated = levels[jax.random.categorical(key, log_p)]
    if ratings is None:
        return expected, replicated, None
    level = jnp.searchsorted(cuts, ratings)  # r in (c_{k-1}, c_k] is level k
    return expected, replicated, jnp.take_along_axis(log_p, level[:, None], axis=1)[:, 0]


def _log_interval(lo: jax.Array, hi: jax.Array) -> jax.Array:
    """log(Phi(hi) - Phi(lo)) for lo < hi, accurate in both tails: reflected (Phi(-lo) - Phi(-hi))
    when lo > 0, so the difference is always of two lower-tail log-CDFs."""
    flip = lo > 0
    a, b = jnp.where(flip, -hi, lo), jnp.where(flip, -lo, hi)
    log_a, log_b = log_ndtr(a), log_ndtr(b)
    return log_b + jnp.log1p(-jnp.exp(log_a - log_b))


def _sample_stats(raw: Any, config: dict | None, posterior: Posterior, chains: int, draws: int) -> dict[str, dict]:
    """{group: {name: (dims, values)}} of what the fitter recorded beside its draws; the one
    place that asks which fitter made a result, since each records different things."""
    from probmf.fitters.gibbs import GibbsResult
    from probmf.fitters.nuts import NUTSResult
    from probmf.fitters.svi import SVIResult

    dims = ("chain", "draw")
    if isinstance(raw, GibbsResult) and posterior is not None:
        trace = {name: np.asarray(v, np.float64).reshape(chains, -1) for name, v in raw.trace._asdict().items()}
        found = _kept_sweeps(trace["tau"], np.asarray(posterior.tau, np.float64).reshape(chains, draws), config)
        if found is None:
            return {}
        kept, thin = found
        num_warmup = kept[0] - (thin - 1)
        stats = {"sample_stats": {name: (dims, v[:, kept]) for name, v in trace.items()}}
        if num_warmup > 0:
            warmup = {name: (("chain", "warmup_draw"), v[:, :num_warmup]) for name, v in trace.items()}
            stats["warmup_sample_stats"] = warmup
        return stats
    if isinstance(raw, NUTSResult):
        if raw.mcmc is None:  # a loaded model: the adapted step size is fixed after warm-up
            return {"sample_stats": {"step_size": (dims, np.repeat(np.asarray(raw.info.step_size)[:, None], draws, 1))}}
        extra = raw.mcmc.get_extra_fields(group_by_chain=True)
        steps = np.asarray(extra["num_steps"])
        return {
            "sample_stats": {
                "diverging": (dims, np.asarray(extra["diverging"], bool)),
                "tree_depth": (dims, np.log2(steps + 1.0)),  # a full tree of depth d takes 2^d - 1 steps
                "n_steps": (dims, steps),
                "step_size": (dims, np.asarray(extra["adapt_state.step_size"], np.float64)),
            }
        }
    if isinstance(raw, SVIResult) and raw.elbo is not None and len(raw.elbo):
        return {"sample_stats": {"elbo": (("epoch",), np.asarray(raw.elbo, np.float64))}}
    return {}


def _kept_sweeps(trace_tau: np.ndarray, draw_tau: np.ndarray, config: dict | None) -> tuple | None:
    """(indices of the kept sweeps, thin) in a Gibbs trace (chains, T) of draws' tau (chains,
    D): num_warmup + thin (d + 1) - 1, with thin from the fit's options or, without them,
    the thinning whose sweeps hold exactly the kept draws' tau (the last sweep is always
    kept); None if none does."""
    T, D = trace_tau.shape[1], draw_tau.shape[1]
    candidates = [int(config["thin"])] if config and config.get("thin") else range(1, T // D + 1)
    for thin in candidates:
        kept = T - 1 - thin * (D - 1 - np.arange(D))
        if kept[0] >= 0 and np.array_equal(trace_tau[:, kept], draw_tau):
            return kept, thin
    return None
