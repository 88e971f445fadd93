"""Side information for the Gibbs sampler (``user_features=``, ``item_features=``): known
attributes of the users and of the items, as in Bayesian factorization machines (Freudenthaler
et al. 2011; Rendle 2013; myFM).

User i's row gains an attribute term in its prior mean,
[w_i; b_i] ~ N(m + F_i Y + X_i A, P^-1), with X (N, G) the given attribute matrix (one-hots,
multi-hots, standardised numerics; rows in the training id map's dense order; zero rows
allowed) and A (G, k+1) one vector per attribute, its last column the attribute's bias. A's
rows are N(0, (c_A P)^-1), c_A ~ Gamma(a_features, b_features); items likewise with their own
X. The term has the form of implicit feedback's F Y (`probmf.fitters.gibbs.implicit`), so it
is drawn the same way, exactly: with T = [W, b] (N, k+1), each side's hyper-parameter block
(`probmf.fitters.gibbs.kernel`) draws in turn

  (mu, Lam) | T - F Y - X A, Y, A   Normal-Wishart; c Y^T Y + c_A A^T A join W*^-1, C + G dof,
  lam_b     | likewise               Gamma,
  Y | T - m - X A, P, c              matrix normal, through F^T F's eigenvectors,
  c | Y, P                           Gamma(a_implicit + C(k+1)/2, b_implicit + tr(Y P Y^T)/2),
  A | T - m - F Y, P, c_A            matrix normal, through X^T X's eigenvectors,
  c_A | A, P                         Gamma(a_features + G(k+1)/2, b_features + tr(A P A^T)/2),

the implicit lines only with ``implicit=True``. The kept draws store the combined rows, so a
row with training ratings predicts as before.

Cold rows gain the most. A row with no training rating but known attributes has, in each
draw, the prior N(m + X_i A, P^-1) rather than N(m, P^-1): each kept draw's
`probmf.posterior.RowPrior` keeps its A (``attributes``) and the posterior keeps X
(``Posterior.features``), so the row's prediction centres on what its attributes say
(`probmf.posterior.draw_predictive`). An id outside the training id map (-1) has unknown
attributes: its prior mean takes the map's average row, m + xbar A. So give the id map every
user and item whose attributes are known (e.g. the whole catalogue), rated or not.

This module checks and converts the matrices (`feature_matrix`), builds their operators
(`feature_operators`, `ImplicitOperator`s with X's values as weights), holds each side's
attribute parameters (`FeatureSide`); a checkpoint's options record each matrix by its
digest (`probmf.checkpoint.matrix_digest`).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import numpy as np
import scipy.sparse as sp

from probmf.data.features import FeatureTable, design_matrix
from probmf.data.ratings import IdMap, Ratings
from probmf.fitters.gibbs.implicit import MAX_IMPLICIT_COLUMNS, ImplicitOperator, implicit_operator

SIDES = ("user", "item")


class FeatureSide(NamedTuple):
    """One side's attribute parameters: A (G, k+1), one vector [a_g; a_g bias] per column of
    X, and c (), the scale of their prior precision (c_A)."""

    A: jax.Array
    c: jax.Array


def feature_matrix(X: sp.spmatrix | sp.sparray | np.ndarray, side: str) -> sp.csr_matrix:
    """``X`` (scipy.sparse or dense, (rows, G) numbers) as canonical float64 CSR (sorted
    indices, no duplicates or stored zeros), or a ValueError naming ``side`` ("user", "item")."""
    name = f"{side}_features"
    try:
        M = sp.csr_matrix(X, dtype=np.float64, copy=True) if sp.issparse(X) else np.asarray(X, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name} must be a 2-d scipy.sparse or numpy matrix of numbers ({err})") from None
    if M.ndim != 2:
        raise ValueError(f"{name} must be a 2-d matrix ({side}s x attributes), got shape {M.shape}")
    M = sp.csr_matrix(M)
    num_cols = M.shape[1]
    if num_cols == 0:
        raise ValueError(f"{name} has no columns; pass None for no {side} attributes")
    if num_cols > MAX_IMPLICIT_COLUMNS:
        raise ValueError(
            f"{name} has {num_cols} columns; side information draws exactly through a G x G "
            f"eigendecomposition and supports at most {MAX_IMPLICIT_COLUMNS} attributes"
        )
    if not np.all(np.isfinite(M.data)):
        raise ValueError(f"{name} holds NaN or infinite values")
    M.sum_duplicates()
    M.eliminate_zeros()
    return M


def side_matrix(
    X: FeatureTable | sp.spmatrix | sp.sparray | np.ndarray | None, id_map: IdMap, side: str
) -> sp.csr_matrix | None:
    """``X`` as the design matrix of the training id map: a `FeatureTable` (raw ids) aligned
    with ``id_map`` (`probmf.data.features.design_matrix`: an id without a row gets a zero row,
    with a warning), a matrix as it is (rows already in dense index order); None stays None."""
    if isinstance(X, FeatureTable):
        return feature_matrix(design_matrix(X, id_map), side)
    return X


def check_rows(M: sp.csr_matrix, num_rows: int, side: str) -> None:
    """A ValueError unless ``M`` has one row per ``side`` of the training id map."""
    if M.shape[0] != num_rows:
        raise ValueError(
            f"{side}_features has {M.shape[0]} rows; it needs {num_rows}, one per {side} of the training "
            f"data's id map, in dense index order"
        )


def feature_operator(M: sp.csr_matrix) -> ImplicitOperator:
    """X as an `ImplicitOperator` (its nonzeros as weights, X^T X's eigendecomposition)."""
    coo = M.tocoo()
    return implicit_operator(coo.row, coo.col, M.shape[0], M.shape[1], coo.data)


def feature_operators(
    user_features: FeatureTable | sp.spmatrix | sp.sparray | np.ndarray | None,
    item_features: FeatureTable | sp.spmatrix | sp.sparray | np.ndarray | None,
    train: Ratings,
) -> tuple | None:
    """(users', items') `ImplicitOperator` of the attribute matrices (None for a side without),
    after checking their rows against ``train``'s id maps; None when neither is given."""
    if user_features is None and item_features is None:
        return None
    sizes = (train.num_users, train.num_items)
    ops = []
    for M, side, n in zip((user_features, item_features), SIDES, sizes, strict=True):
        if M is not None:
            check_rows(M, n, side)
        ops.append(None if M is None else feature_operator(M))
    return tuple(ops)


def features_of(ops: tuple | None) -> tuple | None:
    """`probmf.posterior.Posterior.features` of (users', items') operators: each side's X as
    (rows, cols, values) (None for a side without); None without side information."""
    if ops is None:
        return None
    return tuple(None if op is None else (op.rows, op.cols, op.weights) for op in ops)
