"""Implicit feedback for the Gibbs sampler (``implicit=True``; SVD++ in both directions,
Koren 2008, as in Rendle et al. 2019): which items a user rated, and which users rated an
item, in the TRAINING data.

User i's vector gains terms from the items N(i) it rated, w_i + |N(i)|^-1/2 sum_{j in N(i)} y_j,
and item j's vector terms from its raters. In law this is a per-row prior mean,
[w_i; b_i] ~ N(m + F_i Y, P^-1) with F_ij = |N(i)|^-1/2 on N(i) (Y's bias column is SVD++'s
implicit bias), so the row blocks of the sweep change only in their prior means. Y's rows are
N(0, (c P)^-1) with c ~ Gamma(a_implicit, b_implicit). Each side's hyper-parameter block
then draws, in turn: (mu_w, Lam_w) | W - F Y, Y (Normal-Wishart with c Y^T Y added to W*^-1
and C more degrees of freedom); lam_b | b - F Y, Y likewise; Y | W, b, c (matrix normal,
`sample_implicit`); and c | Y, P (Gamma) (`probmf.fitters.gibbs.kernel`'s side block). Items
do the same with their raters. The kept draws store the combined vectors, so prediction is
unchanged.

This module holds F (`ImplicitOperator`), each side's implicit parameters (`ImplicitSide`)
and the draw of Y, a perturb-and-solve draw with the matrix F^T F + c I: solved exactly through
its eigendecomposition (computed once on the host; C^3 flops and C^2 floats, so up to
`MAX_IMPLICIT_COLUMNS` columns), or by conjugate gradients (`solve_cg`) with F^T F applied as
two passes over the training tiles (`probmf.fitters.rows.row_sums`), preconditioned by its
diagonal with its largest eigenvalues deflated (`coarse_space`), warm-started from the previous
sweep's Y and stopped at a relative residual of `CG_TOLERANCE` in every column (1e-4: each entry
within ~0.1% of its posterior sd of the exact draw on ML-100K, `tests/test_gibbs.py`). "auto"
takes the eigendecomposition where it fits.
Side information (`probmf.fitters.gibbs.features`) is a second term of the same form, X A,
whose operator and draw are these.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import scipy.sparse as sp
from jax import lax

from probmf.data.ratings import Ratings
from probmf.encoding import Encoded, RowTiles
from probmf.fitters.rows import row_sums
from probmf.linalg import cholesky, solve_lower
from probmf.sharding import replicated, to_host


class ImplicitOperator(NamedTuple):
    """A sparse F (N, C), the diagonal of F^T F (``diag`` (C,)), and what its draws need:

    - F as its nonzeros (``rows``, ``cols``, ``weights`` (n,)), or, for implicit feedback on
      large data, as the training tiles (``tiles``: the `RowTiles` whose rows are F's rows,
      those whose rows are F's columns, and F's row weights (N,)), so that F Y and F^T T are
      tile passes like a half-sweep's instead of scatters over every rating;
    - the eigendecomposition F^T F = V diag(D) V^T (``vecs`` (C, C), ``vals`` (C,)) that makes
      the draw of the vectors it weighs exact for any c, or None: the draw then solves by
      conjugate gradients (`sample_implicit`), with the ``coarse`` space of its preconditioner
      (`coarse_space`; None: Jacobi alone).

    For implicit feedback F_ij = |N(i)|^-1/2 on row i's training set N(i); for side
    information F is an attribute matrix X (`probmf.fitters.gibbs.features`)."""

    rows: jax.Array | None
    cols: jax.Array | None
    weights: jax.Array | None
    vecs: jax.Array | None
    vals: jax.Array | None
    diag: jax.Array
    tiles: tuple | None = None
    coarse: tuple | None = None

    @property
    def num_cols(self) -> int:
        return self.diag.shape[0]

    def apply(self, Y: jax.Array, num_rows: int) -> jax.Array:
        """F Y: (C, d) -> (N, d)."""
        if self.tiles is not None:
            return self.tiles[2][:, None] * row_sums(self.tiles[0], Y)
        assert self.rows is not None and self.cols is not None and self.weights is not None, "no tiles: nonzeros"
        return jax.ops.segment_sum(Y[self.cols] * self.weights[:, None], self.rows, num_rows)

    def gram(self, Y: jax.Array, num_rows: int) -> jax.Array:
        """F^T F Y: (C, d) -> (C, d), two passes."""
        return self.apply_t(self.apply(Y, num_rows))

    def apply_t(self, T: jax.Array) -> jax.Array:
        """F^T T: (N, d) -> (C, d)."""
        if self.tiles is not None:
            return row_sums(self.tiles[1], self.tiles[2][:, None] * T)
        assert self.rows is not None and self.cols is not None and self.weights is not None, "no tiles: nonzeros"
        return jax.ops.segment_sum(T[self.rows] * self.weights[:, None], self.cols, self.num_cols)


# The exact draw eigendecomposes a C x C Gram on the host (C^3 flops, C^2 floats): up to this
# many columns (12,000: ~1 min and 0.6 GB once); past it "auto" solves each draw by CG.
MAX_IMPLICIT_COLUMNS = 12_000
IMPLICIT_SOLVERS = ("auto", "eigen", "cg")
# CG stops when every column's residual is below CG_TOLERANCE times its right-hand side (2-norms).
CG_TOLERANCE = 1e-4
CG_MAX_ITERATIONS = 1_000
# The Jacobi-scaled F^T F of implicit feedback has one or two eigenvalues far above the rest
# (172 and 9 over a bulk below 3 for the users of the ML-1M-shaped preset; 279 and 18 for its
# items), which cost float32 CG about 40% more iterations. The preconditioner deflates this
# many (`coarse_space`), found by this many steps of orthogonal iteration at set-up.
CG_DEFLATION = 2
COARSE_STEPS = 15


def implicit_solver(solver: str, num_cols: int) -> str:
    """The solver, "eigen" or "cg", of a side with ``num_cols`` columns: ``solver`` as given,
    "auto" the eigendecomposition up to `MAX_IMPLICIT_COLUMNS` columns and CG past them; a
    ValueError for an unknown solver or an eigendecomposition too large."""
    if solver not in IMPLICIT_SOLVERS:
        raise ValueError(f"implicit_solver must be one of {IMPLICIT_SOLVERS}, got {solver!r}")
    if solver == "auto":
        return "eigen" if num_cols <= MAX_IMPLICIT_COLUMNS else "cg"
    if solver == "eigen" and num_cols > MAX_IMPLICIT_COLUMNS:
        raise ValueError(
            f"implicit feedback's exact draw eigendecomposes a {num_cols} x {num_cols} Gram; the eigen solver "
            f"supports at most {MAX_IMPLICIT_COLUMNS} users and items (implicit_solver='cg' or 'auto' solves by CG)"
        )
    return solver


def implicit_operator(
    rows: np.ndarray, cols: np.ndarray, num_rows: int, num_cols: int, weights: np.ndarray | None = None,
    solver: str = "eigen",
) -> ImplicitOperator:  # fmt: skip
    """The `ImplicitOperator` of F with nonzeros F[rows[t], cols[t]] = weights[t] (distinct
    pairs); ``weights`` None: implicit feedback's |N(i)|^-1/2, for the training pairs (one per
    rating). ``solver``: "eigen" (eigendecomposition), "cg" (none) or "auto" (`implicit_solver`)."""
    solver = implicit_solver(solver, num_cols)
    if weights is None:
        counts = np.bincount(rows, minlength=num_rows).astype(np.float64)
        weights = 1.0 / np.sqrt(counts[rows])
    F = sp.csr_matrix((weights, (rows, cols)), shape=(num_rows, num_cols))
    diag = np.asarray(F.multiply(F).sum(axis=0)).ravel()
    vals: jax.Array | None = None
    vecs: jax.Array | None = None
    coarse = None
    if solver == "eigen":
        eigvals, eigvecs = np.linalg.eigh((F.T @ F).toarray())
        vals, vecs = jnp.asarray(np.maximum(eigvals, 0.0), jnp.float32), jnp.asarray(eigvecs, jnp.float32)
    else:
        coarse = coarse_space(lambda Z: F.T @ (F @ Z), diag)
    return ImplicitOperator(
        jnp.asarray(rows, jnp.int32), jnp.asarray(cols, jnp.int32), jnp.asarray(weights, jnp.float32), vecs, vals,
        jnp.asarray(diag, jnp.float32), coarse=coarse,
    )  # fmt: skip


def coarse_space(
    gram: Callable[[np.ndarray], np.ndarray], diag: np.ndarray, size: int = CG_DEFLATION, steps: int = COARSE_STEPS,
    mesh: jax.sharding.Mesh | None = None,
) -> tuple[jax.Array, jax.Array, jax.Array] | None:  # fmt: skip
    """(Z, G Z, g), the coarse space of `solve_cg`'s preconditioner for G = F^T F (``gram``:
    Z (C, m) -> G Z, on the host; ``diag`` (C,) its diagonal D): Z (C, m) spans
    D^-1/2 times the top m = ``size`` eigenvectors of D^-1/2 G D^-1/2, by ``steps`` steps of
    orthogonal iteration from a fixed start, and is then rotated (Rayleigh-Ritz) so that
    Z^T Z = I and Z^T G Z = diag(g): Z^T (G + c I) Z = diag(g + c) for every c. None when
    C <= 2m (nothing to deflate). Placed on ``mesh``'s devices, replicated, when given."""
    C = diag.shape[0]
    if C <= 2 * size:
        return None
    d = np.asarray(diag, np.float64)
    s = np.where(d > 0, 1.0 / np.sqrt(np.where(d > 0, d, 1.0)), 0.0)[:, None]  # unrated columns: left alone
    X = np.random.default_rng(0).standard_normal((C, size))
    for _ in range(steps):
        X = np.linalg.qr(s * gram(s * X))[0]
    Z = np.linalg.qr(s * X)[0]
    GZ = gram(Z)
    g, W = np.linalg.eigh(0.5 * (Z.T @ GZ + GZ.T @ Z))
    Z, GZ, g = (np.asarray(a, np.float32) for a in (Z @ W, GZ @ W, np.maximum(g, 0.0)))
    if mesh is not None:
        return replicated(mesh, (Z, GZ, g))
    return jnp.asarray(Z), jnp.asarray(GZ), jnp.asarray(g)


def tiled_operator(tiles: RowTiles, tiles_t: RowTiles) -> ImplicitOperator:
    """Implicit feedback's F for CG, as the training tiles: F_ij = |N(i)|^-1/2 on the entries
    of ``tiles`` (rows = F's rows), whose transpose pattern is ``tiles_t``; no copy of the
    ratings and no eigendecomposition. diag(F^T F)_j = sum over j's rows i of 1/|N(i)|."""
    counts = tiles.counts
    weights = jnp.where(counts > 0, 1.0 / jnp.sqrt(jnp.maximum(counts, 1.0)), 0.0)
    diag = row_sums(tiles_t, (weights * weights)[:, None])[:, 0]
    op = ImplicitOperator(None, None, None, None, None, diag, (tiles, tiles_t, weights))
    gram = jax.jit(lambda Z: op.gram(Z, tiles.num_rows))

    def gram_host(Z: np.ndarray) -> np.ndarray:  # the host's float64 block through the device passes
        return np.asarray(to_host(gram(replicated(tiles.mesh, Z.astype(np.float32)))), np.float64)

    return op._replace(coarse=coarse_space(gram_host, np.asarray(to_host(diag)), mesh=tiles.mesh))


def implicit_operators(
    train: Ratings, solver: str = "eigen", data: Encoded | None = None
) -> tuple[ImplicitOperator, ImplicitOperator]:
    """(users', items') `ImplicitOperator`: the items each user rated, the users who rated each
    item. ``solver`` per side (`implicit_solver`); a CG side uses ``data``'s tiles (the encoded
    ``train``) when given, else the nonzeros."""

    def side(
        rows: np.ndarray,
        cols: np.ndarray,
        num_rows: int,
        num_cols: int,
        tiles: RowTiles | None,
        tiles_t: RowTiles | None,
    ) -> ImplicitOperator:
        if implicit_solver(solver, num_cols) == "cg" and tiles is not None and tiles_t is not None:  # with data
            return tiled_operator(tiles, tiles_t)
        return implicit_operator(rows, cols, num_rows, num_cols, solver=solver)

    by_user, by_item = (data.by_user, data.by_item) if data is not None else (None, None)
    return (side(train.users, train.items, train.num_users, train.num_items, by_user, by_item),
            side(train.items, train.users, train.num_items, train.num_users, by_item, by_user))  # fmt: skip


class ImplicitSide(NamedTuple):
    """One side's implicit-feedback parameters: Y (C, k+1), one vector [y_j; a_j] per column
    of F (per item, for the users' side), and c (), the scale of their prior precision."""

    Y: jax.Array
    c: jax.Array


def sample_implicit(
    rng_key: jax.Array,
    T: jax.Array,
    P: jax.Array,
    c: jax.Array,
    op: ImplicitOperator,
    linalg: str = "lapack",
    x0: jax.Array | None = None,
) -> jax.Array:
    """Y ~ p(Y | T) when the rows of T (N, d) are N(F_i Y, P^-1) and those of Y (C, d) are
    N(0, (c P)^-1): matrix normal with row covariance (F^T F + c I)^-1 and column covariance
    P^-1, drawn by perturbation, Y = (F^T F + c I)^-1 (F^T (T + E1) + sqrt(c) E2) with the
    rows of E1, E2 ~ N(0, P^-1) (its mean is the posterior mean and its covariance
    (F^T F + c I)^-1 (F^T F + c I)(F^T F + c I)^-1 (x) P^-1). The inverse runs through F^T F's
    eigenvectors, exactly, or (``op.vecs`` None) by preconditioned conjugate gradients
    (`solve_cg`) from ``x0`` (C, d) (e.g. the previous sweep's Y; None: zeros), to `CG_TOLERANCE`."""
    key_1, key_2 = jax.random.split(rng_key)
    d = P.shape[0]
    L = cholesky(P, linalg)
    L_inv_t = solve_lower(jnp.broadcast_to(L, (d, d, d)), jnp.eye(d), transpose=True, linalg=linalg).T  # L^-T
    e1 = jax.random.normal(key_1, T.shape) @ L_inv_t.T  # rows L^-T z ~ N(0, P^-1)
    e2 = jax.random.normal(key_2, (op.num_cols, d)) @ L_inv_t.T
    rhs = op.apply_t(T + e1) + jnp.sqrt(c) * e2
    if op.vecs is None:
        return solve_cg(op, c, rhs, T.shape[0], jnp.zeros_like(rhs) if x0 is None else x0, CG_TOLERANCE)[0]
    assert op.vals is not None, "an operator with eigenvectors keeps their eigenvalues"
    hi = lax.Precision.HIGHEST
    return jnp.matmul(op.vecs, jnp.matmul(op.vecs.T, rhs, precision=hi) / (op.vals + c)[:, None], precision=hi)


def solve_cg(
    op: ImplicitOperator, c: jax.Array, rhs: jax.Array, num_rows: int, x0: jax.Array, tol: float = CG_TOLERANCE,
    max_iterations: int = CG_MAX_ITERATIONS,
) -> tuple[jax.Array, jax.Array]:  # fmt: skip
    """(Y, iterations): Y (C, d) solving A Y = rhs column by column, A = F^T F + c I, by
    conjugate gradients from ``x0``, until every column's residual 2-norm is at most ``tol``
    times its right-hand side's (or ``max_iterations``). Each iteration applies F and F^T once
    (two passes over the ratings).

    The preconditioner is Jacobi's, M = diag(A), or with ``op.coarse`` = (Z, G Z, g) the
    balancing (BNN) preconditioner that deflates span(Z) (Tang et al. 2009, "Comparison of
    two-level preconditioners derived from deflation, domain decomposition and multigrid"):
    (I - Q A) M^-1 (I - A Q) + Q with Q = Z (Z^T A Z)^-1 Z^T, Z^T A Z = diag(g + c); symmetric
    positive definite for any Z, so the solution is the same, and its cost O(C m d) an
    iteration, since A Z = G Z + c Z."""

    def gram(Y: jax.Array) -> jax.Array:
        return op.gram(Y, num_rows) + c * Y

    m_inv = (1.0 / (op.diag + c))[:, None]
    hi = lax.Precision.HIGHEST
    if op.coarse is not None:  # A Z and E^-1 once, outside the iterations
        Z, GZ, g = op.coarse
        AZ, e_inv = GZ + c * Z, (1.0 / (g + c))[:, None]

    def precondition(r: jax.Array) -> jax.Array:
        if op.coarse is None:
            return m_inv * r
        q = e_inv * jnp.matmul(Z.T, r, precision=hi)  # E^-1 Z^T r
        y = m_inv * (r - jnp.matmul(AZ, q, precision=hi))  # M^-1 (I - A Q) r
        return y + jnp.matmul(Z, q - e_inv * jnp.matmul(AZ.T, y, precision=hi), precision=hi)

    bound = (tol * tol) * jnp.sum(rhs * rhs, axis=0)
    r = rhs - gram(x0)
    z = precondition(r)
    state = (jnp.int32(0), x0, r, z, jnp.sum(r * z, axis=0))

    def not_done(s: tuple) -> jax.Array:
        return (s[0] < max_iterations) & jnp.any(jnp.sum(s[2] * s[2], axis=0) > bound)

    def step(s: tuple) -> tuple:
        it, x, r, p, rz = s
        Ap = gram(p)
        pAp = jnp.sum(p * Ap, axis=0)
        alpha = jnp.where(pAp > 0, rz / jnp.where(pAp > 0, pAp, 1.0), 0.0)  # a converged column stays put
        x, r = x + alpha * p, r - alpha * Ap
        z = precondition(r)
        rz_new = jnp.sum(r * z, axis=0)
        p = z + jnp.where(rz > 0, rz_new / jnp.where(rz > 0, rz, 1.0), 0.0) * p
        return it + 1, x, r, p, rz_new

    it, x, *_ = lax.while_loop(not_done, step, state)
    return x, it
