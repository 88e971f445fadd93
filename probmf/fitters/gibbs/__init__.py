"""Bayesian MF by blocked Gibbs sampling (BPMF, Salakhutdinov & Mnih 2008), biases included.

Model: r_ij ~ N(w_i.u_j + b_i + c_j + mu, 1/tau), tau ~ Gamma(a_tau, b_tau);
w_i ~ N(mu_w, Lam_w^-1) with (mu_w, Lam_w) ~ Normal-Wishart(mu0 = 0, beta0, W0 = I, nu0 = k),
u_j likewise with its own hyper-parameters; b_i ~ N(0, 1/lam_b), c_j ~ N(0, 1/lam_c) with
lam_b, lam_c ~ Gamma(a_bias, b_bias); mu fixed at the training mean.
With implicit feedback and/or side information each row's prior mean gains F_i Y and/or
X_i A (the items a user rated; the user's known attributes), items likewise. With time
effects (``time=True``) a rating at time t also gains c_{j,bin(t)} + alpha_i dev_i(t)
(timeSVD++'s item bias per time bin and user drift).

Every conditional is conjugate, so a sweep draws each block exactly. The modules:
  `kernel`    the sampler's state and one sweep: Normal-Wishart and Gamma hyper-parameter
              draws, the batched row draws, tau; the cold-row priors of a state;
  `rounded`   the rounded (ordered-probit) likelihood, ``likelihood="rounded"``: latent
              ratings drawn from truncated normals each sweep;
  `implicit`  implicit feedback, ``implicit=True`` (SVD++ in both directions): per-row prior
              means F Y and the draw of Y (eigendecomposition, or CG at any size);
  `features`  side information, ``user_features=``/``item_features=``: attribute matrices X
              whose vectors A are drawn as Y is; cold rows predicted from their attributes;
  `temporal`  time effects, ``time=True`` (timeSVD++): item biases per time bin and user
              drifts, per-rating offsets drawn as conjugate scalars each sweep;
  `chain`     the driver: `fit_gibbs`, checkpointed chunks of sweeps (`gibbs_chunk`), the kept
              draws and/or running predictive moments (`GibbsResult`).
A chain depends only on (key, sweep, row), whatever the blocks, devices or checkpoint chunks.
"""

from probmf.fitters.gibbs.chain import (
    LIKELIHOODS,
    SAVED_TYPES,
    GibbsChain,
    GibbsConfig,
    GibbsResult,
    fit_gibbs,
    gibbs_chunk,
    init_chain,
    prepare_gibbs,
)
from probmf.fitters.gibbs.features import FeatureSide, feature_matrix, feature_operator, feature_operators
from probmf.fitters.gibbs.implicit import (
    CG_TOLERANCE,
    IMPLICIT_SOLVERS,
    MAX_IMPLICIT_COLUMNS,
    ImplicitOperator,
    ImplicitSide,
    coarse_space,
    implicit_operator,
    implicit_operators,
    implicit_solver,
    sample_implicit,
    solve_cg,
    tiled_operator,
)
from probmf.fitters.gibbs.kernel import (
    GibbsInfo,
    GibbsState,
    _block_prior,
    _sample_rows,
    gibbs_sweep,
    init_state,
    row_priors,
    sample_normal_wishart,
)
from probmf.fitters.gibbs.rounded import (
    Latent,
    rounding_intervals,
    truncated_from_uniform,
    truncated_standard_normal,
    with_values,
)
from probmf.fitters.gibbs.temporal import (
    DEFAULT_TIME_BINS,
    TimeData,
    TimeState,
    init_time,
    sample_time,
    time_data,
    training_clock,
)

__all__ = [
    "CG_TOLERANCE",
    "IMPLICIT_SOLVERS",
    "DEFAULT_TIME_BINS",
    "LIKELIHOODS",
    "MAX_IMPLICIT_COLUMNS",
    "SAVED_TYPES",
    "GibbsChain",
    "GibbsInfo",
    "GibbsResult",
    "GibbsState",
    "FeatureSide",
    "ImplicitOperator",
    "ImplicitSide",
    "Latent",
    "TimeData",
    "TimeState",
    "_block_prior",
    "_sample_rows",
    "fit_gibbs",
    "prepare_gibbs",
    "GibbsConfig",
    "coarse_space",
    "feature_matrix",
    "feature_operator",
    "feature_operators",
    "gibbs_chunk",
    "gibbs_sweep",
    "implicit_operator",
    "implicit_operators",
    "implicit_solver",
    "init_chain",
    "init_state",
    "init_time",
    "rounding_intervals",
    "row_priors",
    "sample_implicit",
    "sample_normal_wishart",
    "solve_cg",
    "tiled_operator",
    "sample_time",
    "time_data",
    "training_clock",
    "truncated_from_uniform",
    "truncated_standard_normal",
    "with_values",
]
