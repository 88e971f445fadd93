"""The hand-written mean-field SVI program: `Trace_ELBO` with an `AutoNormal` guide for
`probmf.fitters.bayes_model.mf_model` (hyper "fixed" or "gamma"), written out without NumPyro.

`mf_log_joint` is the model's log joint at unconstrained values, `meanfield_elbo` its one-draw
reparameterised ELBO under a mean-field normal guide, `_meanfield_init` starts the guide as
AutoNormal would, `_meanfield_draw` draws from it in antithetic pairs, and `_meanfield_program`
is the training step `probmf.fitters.svi.fit_svi` runs for its default guide. The parameters
stay flat and no softplus or log of the dense parameters is taken (the cost of NumPyro's own
step on CPU).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.typing import ArrayLike

from probmf.fitters.bayes_model import DEFAULT_PRIORS
from probmf.model import MFParams, predict
from probmf.objectives import Hyperpriors

_LOG_2PI = float(np.log(2.0 * np.pi))


def mf_log_joint(
    z: dict,
    users: jax.Array,
    items: jax.Array,
    ratings: jax.Array,
    *,
    mu: ArrayLike,
    num_ratings: int | None = None,
    hyper: str = "gamma",
    hyperpriors: Hyperpriors = DEFAULT_PRIORS,
) -> jax.Array:
    """log p(r_batch, theta) of `mf_model` ("fixed" or "gamma") at unconstrained values ``z``.

    ``z`` maps each latent site to its value, the positive sites (tau, lam_*) as z = log x with
    the Jacobian of that change included (log p(z) = log p(x) + z), the density NumPyro's
    `Trace_ELBO` evaluates for an `AutoNormal` guide. The likelihood of the B ratings is
    scaled by ``num_ratings`` / B (None: 1). Elementwise work runs on flat views of W and U
    (XLA's CPU loops vectorise poorly along a minor axis of k).
    """
    p = hyperpriors

    def log_gamma(name: str, a: float, b: float) -> jax.Array:  # log density of z = log x, x ~ Gamma(a, b)
        return jnp.sum(a * np.log(b) - math.lgamma(a) + a * z[name] - b * jnp.exp(z[name]))

    if hyper == "gamma":
        names = ("lam_w", "lam_u", "lam_b", "lam_c")
        lam, log_lam = {n: jnp.exp(z[n]) for n in names}, {n: z[n] for n in names}
        shape_rate = {"lam_w": (p.a_lam, p.b_lam), "lam_u": (p.a_lam, p.b_lam), "lam_b": (p.a_bias, p.b_bias),
                      "lam_c": (p.a_bias, p.b_bias)}  # fmt: skip
        log_p = sum(log_gamma(n, *shape_rate[n]) for n in names)
    elif hyper == "fixed":
        lam = {"lam_w": p.lam, "lam_u": p.lam, "lam_b": p.lam_bias, "lam_c": p.lam_bias}
        log_lam = {n: np.log(v) for n, v in lam.items()}
        log_p = 0.0
    else:
        raise ValueError(f"mf_log_joint takes hyper 'fixed' or 'gamma', got {hyper!r}")
    for name, lam_name in (("W", "lam_w"), ("U", "lam_u"), ("b", "lam_b"), ("c", "lam_c")):
        x = z[name]  # (rows, k) with (k,) precisions, or (rows,) with one
        prec = jnp.broadcast_to(lam[lam_name], x.shape).reshape(-1)
        rows = x.size // np.size(log_lam[lam_name])
        log_p = log_p + (
            0.5 * rows * jnp.sum(log_lam[lam_name]) - 0.5 * jnp.sum(prec * jnp.square(x.reshape(-1)))
            - 0.5 * x.size * _LOG_2PI
        )  # fmt: skip
    log_p = log_p + log_gamma("tau", p.a_tau, p.b_tau)
    mean = predict(MFParams(z["W"], z["U"], z["b"], z["c"], jnp.asarray(mu)), users, items)
    scale = 1.0 if num_ratings is None else num_ratings / users.shape[0]
    log_lik = scale * jnp.sum(0.5 * z["tau"] - 0.5 * _LOG_2PI - 0.5 * jnp.exp(z["tau"]) * jnp.square(ratings - mean))
    return log_lik + log_p


def meanfield_elbo(
    params: dict,
    rng_key: jax.Array,
    users: jax.Array,
    items: jax.Array,
    ratings: jax.Array,
    *,
    mu: ArrayLike,
    num_ratings: int | None = None,
    hyper: str = "gamma",
    hyperpriors: Hyperpriors = DEFAULT_PRIORS,
) -> jax.Array:
    """One-draw reparameterised ELBO estimate of `mf_model` ("fixed" or "gamma") under a
    mean-field normal guide: `Trace_ELBO` with `AutoNormal`, written out for speed.

    ``params`` maps every latent site to ``(loc, log_scale)``: q(z) = N(loc, exp(log_scale)^2)
    independently for each entry of the site's unconstrained value z, the AutoNormal family
    with its scale on the log scale (as in ADVI). Returns log p(r_batch, z) + H[q] at
    z = loc + exp(log_scale) eps, eps ~ N(0, I) from ``rng_key`` (`mf_log_joint`). The entropy
    is in closed form (sum log_scale + const): its gradient equals that of Trace_ELBO's
    -log q(z) for reparameterised z, so the gradient estimator is Trace_ELBO's. A step costs
    one normal draw and a few elementwise passes per variational parameter, O(B k) for the
    likelihood, and no softplus or log of the dense parameters.
    """
    z, entropy = {}, 0.0
    for i, name in enumerate(sorted(params)):
        loc, log_s = params[name]
        eps = jax.random.normal(jax.random.fold_in(rng_key, i), (loc.size,))
        z[name] = (loc.reshape(-1) + jnp.exp(log_s.reshape(-1)) * eps).reshape(loc.shape)
        entropy = entropy + jnp.sum(log_s.reshape(-1)) + 0.5 * (1.0 + _LOG_2PI) * loc.size
    return (
        mf_log_joint(z, users, items, ratings, mu=mu, num_ratings=num_ratings, hyper=hyper, hyperpriors=hyperpriors)
        + entropy
    )


def _meanfield_init(rng_key: jax.Array, sites: dict, *, init_scale: float, hyperpriors: Hyperpriors) -> dict:
    """Initial {site: (loc, log scale)} of the hand-written path, as `make_guide` starts
    AutoNormal: factor means ~ N(0, init_scale^2); every other site at the median of 15 draws
    from its prior given the sites before it (NumPyro's ``init_to_median``, in log space for
    the positive sites); every scale 0.01."""
    p = hyperpriors
    keys = dict(zip(sites, jax.random.split(rng_key, len(sites)), strict=True))

    def median(name: str, draw: Callable[..., jax.Array]) -> jax.Array:  # init_to_median: the median of 15 draws
        return jnp.median(draw(keys[name], (15, *sites[name])), axis=0)

    def gamma(a: float, b: float) -> Callable[[jax.Array, tuple[int, ...]], jax.Array]:
        return lambda key, shape: jax.random.gamma(key, a, shape) / b

    loc = {}
    for name, a, b in (("lam_w", p.a_lam, p.b_lam), ("lam_u", p.a_lam, p.b_lam), ("lam_b", p.a_bias, p.b_bias),
                       ("lam_c", p.a_bias, p.b_bias)):  # fmt: skip
        if name in sites:
            loc[name] = jnp.log(median(name, gamma(a, b)))
    loc["tau"] = jnp.log(median("tau", gamma(p.a_tau, p.b_tau)))
    for name, lam_name in (("b", "lam_b"), ("c", "lam_c")):
        sd = jnp.exp(-0.5 * loc[lam_name]) if lam_name in loc else p.lam_bias**-0.5
        loc[name] = median(name, lambda key, shape, sd=sd: sd * jax.random.normal(key, shape))
    for name in ("W", "U"):
        loc[name] = init_scale * jax.random.normal(keys[name], sites[name])
    return {name: (loc[name].astype(jnp.float32), jnp.full(shape, np.log(0.01), jnp.float32))
            for name, shape in sites.items()}  # fmt: skip


def _meanfield_draw(keys: jax.Array, params: dict) -> dict:
    """Draws {W, U, b, c, tau, lam_*} (each with a leading (S,) axis) from the mean-field guide, in
    antithetic pairs: draw S/2 + j is the reflection loc - (z_j - loc) of draw j (each draw is
    still an exact draw from q; the pairs cancel the Monte Carlo error of every term linear in
    the noise, so the predictive mean over S draws is far less noisy)."""
    num = keys.shape[0]
    half = (num + 1) // 2
    out = {}
    positive = ("tau", "lam_w", "lam_u", "lam_b", "lam_c")
    for i, name in enumerate(n for n in ("W", "U", "b", "c") + positive if n in params):
        loc, log_s = params[name]
        eps = jax.vmap(lambda k, i=i, shape=loc.shape: jax.random.normal(jax.random.fold_in(k, i), shape))(keys[:half])
        eps = jnp.concatenate([eps, -eps[: num - half]])
        z = loc + jnp.exp(log_s) * eps
        out[name] = jnp.exp(z) if name in positive else z
    return out


def _meanfield_program(
    num_users: int, num_items: int, rank: int, hyper: str, init_scale: float, adam: optax.GradientTransformation
) -> tuple[Callable, Callable, Callable, Callable]:
    """(init, update, to_params, draw) of the hand-written path of `probmf.fitters.svi`'s
    ``_svi_program`` (which see), with the optimiser ``adam``: the state is (params {site:
    (loc, log scale)}, Adam state, ELBO key, step) of `meanfield_elbo`, step s drawing its
    noise from fold_in(key, s); ``to_params`` gives AutoNormal's names."""
    sites = {"W": (num_users, rank), "b": (num_users,), "U": (num_items, rank), "c": (num_items,), "tau": ()}
    if hyper == "gamma":
        sites.update(lam_w=(rank,), lam_u=(rank,), lam_b=(), lam_c=())

    # The state holds every site flat (W, U as (N k,), (M k,)): Adam's and the prior's
    # elementwise loops then vectorise on CPU; they are viewed as (N, k), (M, k) for the ELBO.
    def flat(params: dict) -> dict:
        return {name: (loc.reshape(-1), log_s.reshape(-1)) for name, (loc, log_s) in params.items()}

    def shaped(params: dict) -> dict:
        return {name: (loc.reshape(sites[name]), log_s.reshape(sites[name])) for name, (loc, log_s) in params.items()}

    def init(key: jax.Array, users: jax.Array, items: jax.Array, values: jax.Array, data_kwargs: dict) -> tuple:
        key_params, key_elbo = jax.random.split(key)
        params = flat(_meanfield_init(key_params, sites, init_scale=init_scale, hyperpriors=DEFAULT_PRIORS))
        return params, adam.init(params), key_elbo, jnp.zeros((), jnp.int32)

    def neg_elbo(
        params: dict, key: jax.Array, users: jax.Array, items: jax.Array, values: jax.Array, data_kwargs: dict
    ) -> jax.Array:
        return -meanfield_elbo(shaped(params), key, users, items, values, hyper=hyper, **data_kwargs)

    def update(
        state: tuple, users: jax.Array, items: jax.Array, values: jax.Array, data_kwargs: dict
    ) -> tuple[tuple, jax.Array]:
        params, opt_state, key, step = state
        loss, grads = jax.value_and_grad(neg_elbo)(
            params, jax.random.fold_in(key, step), users, items, values, data_kwargs
        )
        updates, opt_state = adam.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state, key, step + 1), loss

    def to_params(state: tuple) -> dict[str, jax.Array]:
        out = {}
        for site, (loc, log_s) in shaped(state[0]).items():
            out[f"{site}_auto_loc"], out[f"{site}_auto_scale"] = loc, jnp.exp(log_s)
        return out

    @jax.jit
    def draw(keys: jax.Array, params: dict[str, jax.Array]) -> dict:
        sites_params = {s: (params[f"{s}_auto_loc"], jnp.log(params[f"{s}_auto_scale"])) for s in sites}
        return _meanfield_draw(keys, sites_params)

    return init, update, to_params, draw
