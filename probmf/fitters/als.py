"""Alternating least squares for the biased MF model, with closed-form row updates.

With the item side fixed, the user row x_i = [w_i; b_i] minimises the ridge problem

    sum_{j in Psi_i} (r_ij - mu - c_j - w_i.u_j - b_i)^2 + lam_i |w_i|^2 + lam_b,i b_i^2,

whose solution, with a_j = [u_j; 1] and y_ij = r_ij - mu - c_j, is

    x_i = (sum_j a_j a_j^T + diag(lam_i I_K, lam_b,i))^-1 sum_j y_ij a_j.

Its two block rows are the seed's updates, satisfied at once:
    w_i = (sum_j u_j u_j^T + lam I)^-1 sum_j (r_ij - b_i - c_j - mu) u_j,
    b_i = sum_j (r_ij - w_i.u_j - c_j - mu) / (|Psi_i| + lam_b).
The item update is symmetric. ``mu`` stays at the training mean (the unpenalised
biases absorb any shift). A half-sweep loops over blocks of rows (`probmf.encoding`):
each block accumulates its row Grams from fixed-length tiles of ratings, then makes one
batched solve.

lam = 0 is MLE. A row rated fewer than k+1 times then has a singular Gram; a jitter of
1e-5 x (mean Gram diagonal) + 1e-9 is always added, which makes the solve the ridge limit of
the minimum-norm least-squares solution: finite, and negligible for full-rank rows. A row
with no ratings gets x_i = 0 (its rating falls back to the other side's bias and mu).

The factor ridge may scale with each row's count, lam_i = lam n_i^alpha; alpha = 1 is ALS-WR
(Zhou et al. 2008).

A sweep whose result is not finite (an overflow on absurd inputs) is not taken: the run keeps
the last finite parameters, records NaN objectives from then on, and `fit_als` warns.
"""

from __future__ import annotations

import functools
import warnings
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.typing import ArrayLike

from probmf.checkpoint import fit_checkpoint
from probmf.data.partitioned import PartitionedRatings
from probmf.data.ratings import Ratings
from probmf.encoding import Encoded, RowTiles, encode, encode_partitioned, layout_for_rank
from probmf.fitters.rows import residual_sum_of_squares, update_rows
from probmf.model import MFParams, init_params
from probmf.objectives import Priors, penalty
from probmf.program import DEFAULT_RUN, Program, RunOptions, run_program
from probmf.sharding import check_devices, device_mesh

_JITTER_REL = 1e-5
_JITTER_ABS = 1e-9
SOLVERS = ("cholesky", "cg")


class ALSInfo(NamedTuple):
    """Per-sweep diagnostics. ``objective``: 1/2 SSE + L2 penalty after the sweep
    (`probmf.objectives.regularized_loss`), computed from the Grams at no extra pass."""

    objective: jax.Array


class ALSResult(NamedTuple):
    params: MFParams
    trace: np.ndarray  # (num_sweeps,) objective after each sweep
    priors: Priors


# The named tuples a saved model of this fitter may hold (`probmf.persistence` rebuilds only these).
SAVED_TYPES = (ALSResult,)


def _cg(A: jax.Array, b: jax.Array, x0: jax.Array, num_iters: int) -> jax.Array:
    """Batched Jacobi-preconditioned conjugate gradients for SPD A (N, k, k), b (N, k).

    No LAPACK: a safe and fast solver for large k on CPU. Started at x0, every
    iteration lowers the quadratic 1/2 x^T A x - b^T x, so ALS stays monotone.
    """
    inv_diag = 1.0 / jnp.diagonal(A, axis1=1, axis2=2)
    matvec = lambda v: jnp.einsum("nkl,nl->nk", A, v, precision=lax.Precision.HIGHEST)  # noqa: E731
    r = b - matvec(x0)
    z = inv_diag * r
    rz = jnp.sum(r * z, -1)

    def body(_: jax.Array | int, state: tuple[jax.Array, ...]) -> tuple[jax.Array, ...]:
        x, r, p, rz = state
        ap = matvec(p)
        pap = jnp.sum(p * ap, -1)
        # A converged row has p = 0: guard the division instead of producing NaN.
        alpha = jnp.where(pap > 0, rz / jnp.where(pap > 0, pap, 1.0), 0.0)
        x = x + alpha[:, None] * p
        r = r - alpha[:, None] * ap
        z = inv_diag * r
        rz_new = jnp.sum(r * z, -1)
        beta = jnp.where(rz > 0, rz_new / jnp.where(rz > 0, rz, 1.0), 0.0)
        return x, r, z + beta[:, None] * p, rz_new

    return lax.fori_loop(0, num_iters, body, (x0, r, z, rz))[0]


def regularize(G: jax.Array, lam_factor: ArrayLike, lam_bias: ArrayLike) -> tuple[jax.Array, jax.Array]:
    """A_i = G_i + diag(d_i), d_i = (lam_factor_i, ..., lam_factor_i, lam_bias_i) + jitter_i.

    G (N, k+1, k+1); lam_factor, lam_bias scalars or (N,). Returns A and d (N, k+1).
    """
    n, k1, _ = G.shape
    lam_factor = jnp.broadcast_to(jnp.asarray(lam_factor, jnp.float32), (n,))
    lam_bias = jnp.broadcast_to(jnp.asarray(lam_bias, jnp.float32), (n,))
    jitter = _JITTER_REL * jnp.trace(G, axis1=1, axis2=2) / k1 + _JITTER_ABS
    d = jnp.concatenate([jnp.repeat(lam_factor[:, None], k1 - 1, axis=1), lam_bias[:, None]], axis=1)
    d = d + jitter[:, None]
    return G + d[..., None] * jnp.eye(k1, dtype=G.dtype), d


def solve_rows(A: jax.Array, h: jax.Array, x0: jax.Array, *, solver: str = "cholesky", cg_iters: int = 10) -> jax.Array:
    """x_i = A_i^-1 h_i for SPD A (N, k, k), h (N, k); x0 (N, k) is CG's warm start.

    One batched solve per call: several independent LAPACK solves in one XLA program can
    deadlock XLA-CPU.
    """
    if solver == "cholesky":
        L = jnp.linalg.cholesky(A)
        return jax.scipy.linalg.cho_solve((L, True), h[..., None])[..., 0]
    if solver == "cg":
        return _cg(A, h, x0, cg_iters)
    raise ValueError(f"unknown solver {solver!r}; choose one of {SOLVERS}")


def _half_sweep(
    X: jax.Array,
    xb: jax.Array,
    Y: jax.Array,
    yb: jax.Array,
    mu: jax.Array,
    tiles: RowTiles,
    lam_factor: ArrayLike,
    lam_bias: ArrayLike,
    solver: str,
    cg_iters: int,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """New rows (X, xb) given the other side (Y, yb), and the SSE of these ratings after it."""
    n = X.shape[0]
    lam_rows = jax.tree.map(lambda v: jnp.broadcast_to(jnp.asarray(v, jnp.float32), (n,)), (lam_factor, lam_bias))

    def solve_block(
        block: jax.Array, G: jax.Array, h: jax.Array, s: jax.Array, x0: jax.Array, lam: tuple[jax.Array, jax.Array]
    ) -> tuple[jax.Array, jax.Array]:
        A, d = regularize(G, *lam)
        x = solve_rows(A, h, x0, solver=solver, cg_iters=cg_iters)
        # G is dead once A exists (XLA can regularise it in place), so G_i = A_i - diag(d_i).
        return x, residual_sum_of_squares(x, A, h, s) - jnp.sum(d * x * x)

    return update_rows(X, xb, Y, yb, mu, tiles, lam_rows, solve_block)


def als_sweep(
    params: MFParams, data: Encoded, priors: Priors, *, solver: str = "cholesky", cg_iters: int = 10
) -> tuple[MFParams, ALSInfo]:
    """One ALS sweep: all user rows given the items, then all item rows given the users."""
    W, U, b, c, mu = params
    W, b, _ = _half_sweep(W, b, U, c, mu, data.by_user, priors.lam_w, priors.lam_b, solver, cg_iters)
    U, c, sse = _half_sweep(U, c, W, b, mu, data.by_item, priors.lam_u, priors.lam_c, solver, cg_iters)
    params = MFParams(W, U, b, c, mu)
    return params, ALSInfo(objective=0.5 * sse + penalty(params, priors))


@functools.partial(jax.jit, static_argnames=("num_sweeps", "solver", "cg_iters"))
def als_run(
    params: MFParams, data: Encoded, priors: Priors, *, num_sweeps: int, solver: str = "cholesky", cg_iters: int = 10
) -> tuple[MFParams, ALSInfo]:
    """``num_sweeps`` ALS sweeps in one `lax.scan`; returns (params, ALSInfo with a leading sweep axis).

    A sweep with a non-finite result is discarded (params unchanged, objective NaN)."""

    def step(p: MFParams, _: None) -> tuple[MFParams, ALSInfo]:
        new, info = als_sweep(p, data, priors, solver=solver, cg_iters=cg_iters)
        finite = jnp.isfinite(info.objective)
        for leaf in jax.tree.leaves(new):
            finite &= jnp.all(jnp.isfinite(leaf))
        keep = jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, p)
        return keep, ALSInfo(jnp.where(finite, info.objective, jnp.nan))

    return lax.scan(step, params, None, length=num_sweeps)


def resolve_solver(solver: str, rank: int) -> str:
    """The solver "auto" stands for at ``rank``: Cholesky up to 32, batched CG above, where
    LAPACK's per-matrix calls dominate; any other ``solver`` as it is."""
    return solver if solver != "auto" else ("cholesky" if rank <= 32 else "cg")


def make_priors(
    counts_user: ArrayLike, counts_item: ArrayLike, *, lam: float, lam_bias: float, weight_exponent: float = 0.0
) -> Priors:
    """Ridge strengths per row: lam n_i^alpha on factors (alpha = ``weight_exponent``;
    0: plain L2, 1: ALS-WR), lam_bias on biases."""
    alpha = jnp.float32(weight_exponent)
    return Priors(lam * counts_user**alpha, lam * counts_item**alpha, jnp.float32(lam_bias), jnp.float32(lam_bias))


class ALSConfig(NamedTuple):
    """ALS's options, defaults chosen by cross-validation on the ML-100K training folds
    (``experiments/tune.py``): rank 10, lam 1.5 with weight_exponent 0.5, lam_bias 3.

    rank: k >= 0; rank 0 is the biases-only model.
    lam: factor ridge strength; row i gets lam * n_i ** weight_exponent.
    lam_bias: bias ridge strength.
    weight_exponent: alpha in lam * n_i^alpha: 0 plain L2, 1 ALS-WR (Zhou et al. 2008).
    num_sweeps: ALS sweeps (each updates users, then items).
    solver: "cholesky" (exact), "cg" (batched CG, ``cg_iters`` iterations, no LAPACK) or
      "auto" (cholesky up to rank 32, CG above, where LAPACK's per-matrix calls dominate).
    init_scale: sd of the initial factors.
    """

    rank: int = 10
    lam: float = 1.5
    lam_bias: float = 3.0
    weight_exponent: float = 0.5
    num_sweeps: int = 15
    solver: str = "auto"
    cg_iters: int = 10
    init_scale: float = 0.1

    def validate(self, run: RunOptions = DEFAULT_RUN) -> ALSConfig:
        """Self, or a ValueError naming the option out of range (before anything compiles);
        ``run``'s devices are checked by `prepare_als`."""
        check_als_options(rank=self.rank, lam=self.lam, lam_bias=self.lam_bias, num_sweeps=self.num_sweeps,
                          solver=self.solver, cg_iters=self.cg_iters)  # fmt: skip
        return self


def prepare_als(
    rng_key: jax.Array, train: Ratings | PartitionedRatings, config: ALSConfig, run: RunOptions = DEFAULT_RUN
) -> Program:
    """The ALS `Program`: state (params, trace (num_sweeps,) objective per sweep, NaN until
    run); a chunk runs `als_run`; finish gives the `ALSResult` (warning about a sweep that
    could not be taken on). ``config`` must be validated. ``train`` may be a partitioned
    folder (`probmf.data.partitioned`): each process then reads only the ratings of the rows
    its devices solve."""
    if len(train) == 0:
        raise ValueError(f"{train.source or 'training ratings'}: no ratings to fit")
    mesh = device_mesh(check_devices(run.devices))
    rank, num_sweeps = config.rank, config.num_sweeps
    solver = resolve_solver(config.solver, rank)
    if isinstance(train, PartitionedRatings):  # each process reads its own rows of the folder
        data, mu = encode_partitioned(train, layout_for_rank(rank), mesh=mesh), train.mu
    else:
        data = encode(train, layout_for_rank(rank), mesh=mesh)
        mu = float(np.mean(train.values, dtype=np.float64))
    params = init_params(rng_key, train.num_users, train.num_items, rank, scale=config.init_scale, mu=mu)
    priors = make_priors(data.by_user.counts, data.by_item.counts, lam=config.lam, lam_bias=config.lam_bias,
                         weight_exponent=config.weight_exponent)  # fmt: skip

    def run_chunk(state: tuple, first: int, num: int) -> tuple[MFParams, np.ndarray]:
        params, info = als_run(state[0], data, priors, num_sweeps=num, solver=solver, cg_iters=config.cg_iters)
        trace = np.array(state[1])
        trace[first : first + num] = np.asarray(info.objective)
        return params, trace

    def finish(state: tuple) -> ALSResult:
        params, trace = state
        stuck = np.flatnonzero(np.isnan(trace))
        if stuck.size:
            warnings.warn(
                f"ALS sweep {stuck[0] + 1} of {num_sweeps} gave non-finite values (overflow?); returning the "
                "parameters of the last finite sweep. Rescale the ratings or raise lambda.",
                RuntimeWarning,
                stacklevel=4,  # finish < run_program < fit_als < the caller
            )
        return ALSResult(params, trace, priors)

    state = (params, np.full(num_sweeps, np.nan, np.float32))
    options = {**config._asdict(), "devices": run.devices}
    ckpt = fit_checkpoint(run.checkpoint, run.checkpoint_every, "als", rng_key, train, options)
    return Program(state, run_chunk, finish, num_sweeps, desc="ALS sweeps", checkpoint=ckpt)


def fit_als(
    rng_key: jax.Array,
    train: Ratings | PartitionedRatings,
    *,
    rank: int = 10,
    lam: float = 1.5,
    lam_bias: float = 3.0,
    weight_exponent: float = 0.5,
    num_sweeps: int = 15,
    solver: str = "auto",
    cg_iters: int = 10,
    init_scale: float = 0.1,
    devices: int = 1,
    checkpoint: str | None = None,
    checkpoint_every: int = 5,
) -> ALSResult:
    """Fit the biased MF model by ALS (MAP; lam = lam_bias = 0 gives the MLE): `prepare_als`
    run by `probmf.program.run_program`.

    The options ``rank`` .. ``init_scale`` are `ALSConfig`'s fields.

    Args:
      rng_key: PRNG key for the factor initialisation.
      train: training `Ratings` (every id known), or a `PartitionedRatings` folder
        (`probmf.data.partitioned.open_partitioned`), of which each process reads only the
        rows its devices solve.
      devices: split the rows of each half-sweep across this many devices (`probmf.sharding`).
      checkpoint: folder to save the parameters in every ``checkpoint_every`` sweeps and
        resume from (`probmf.checkpoint`); None: no checkpoints.
    Returns:
      `ALSResult(params, trace, priors)`; ``trace[s]`` is the objective after sweep s (NaN
      from a sweep that could not be taken on; a warning says so).

    Example:
      >>> from probmf.data.synthetic import synthetic_preset
      >>> train, _ = synthetic_preset("tiny")
      >>> result = fit_als(jax.random.PRNGKey(0), train, rank=3, num_sweeps=5)
      >>> result.params.W.shape, result.trace.shape
      ((60, 3), (5,))
    """
    config = ALSConfig(rank, lam, lam_bias, weight_exponent, num_sweeps, solver, cg_iters, init_scale).validate()
    run = RunOptions(check_devices(devices), checkpoint, checkpoint_every)
    return run_program(prepare_als(rng_key, train, config, run))


def check_als_options(*, rank: int, lam: float, lam_bias: float, num_sweeps: int, solver: str, cg_iters: int) -> None:
    """Reject out-of-range options before anything is compiled."""
    if int(rank) != rank or rank < 0:
        raise ValueError(f"rank must be a non-negative integer, got {rank!r}")
    if not (np.isfinite(lam) and lam >= 0):
        raise ValueError(f"lambda must be >= 0, got {lam!r}")
    if not (np.isfinite(lam_bias) and lam_bias >= 0):
        raise ValueError(f"lambda_bias must be >= 0, got {lam_bias!r}")
    if int(num_sweeps) != num_sweeps or num_sweeps < 1:
        raise ValueError(f"num_sweeps must be a positive integer, got {num_sweeps!r}")
    if solver not in SOLVERS + ("auto",):
        raise ValueError(f"unknown solver {solver!r}; choose one of {SOLVERS + ('auto',)}")
    if int(cg_iters) != cg_iters or cg_iters < 1:
        raise ValueError(f"cg_iters must be a positive integer, got {cg_iters!r}")
