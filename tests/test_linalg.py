"""Batched Cholesky and triangular solves, with and without LAPACK, against numpy."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from probmf.linalg import cholesky, gaussian_draw, solve_lower


@pytest.fixture(scope="module")
def spd():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(40, 25, 6))
    A = X.transpose(0, 2, 1) @ X + 0.5 * np.eye(6)
    return A, rng.normal(size=(3000, 40, 6))


@pytest.mark.parametrize("linalg", ["lapack", "jax"])
def test_cholesky_and_solves_match_numpy(spd, linalg):
    A, B = spd
    L = cholesky(jnp.asarray(A, jnp.float32), linalg)
    L_ref = np.linalg.cholesky(A)
    np.testing.assert_allclose(np.asarray(L), L_ref, atol=2e-5 * np.abs(L_ref).max())
    b = B[0]
    for transpose in (False, True):
        ref = np.linalg.solve(np.swapaxes(L_ref, 1, 2) if transpose else L_ref, b[..., None])[..., 0]
        got = solve_lower(L, jnp.asarray(b, jnp.float32), transpose=transpose, linalg=linalg)
        np.testing.assert_allclose(np.asarray(got), ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("linalg", ["lapack", "jax"])
def test_solves_under_vmap_over_thousands_of_right_hand_sides(spd, linalg):
    """The Gibbs row draws vmap shared factors against many noise vectors; a fused
    multiply-reduce once gave wrong answers at this size (see probmf.linalg)."""
    A, B = spd
    L = cholesky(jnp.asarray(A, jnp.float32), linalg)
    L_ref = np.linalg.cholesky(A)
    for transpose in (False, True):
        got = jax.jit(jax.vmap(lambda b, t=transpose: solve_lower(L, b, transpose=t, linalg=linalg)))(
            jnp.asarray(B, jnp.float32)
        )
        M = np.swapaxes(L_ref, 1, 2) if transpose else L_ref
        ref = np.linalg.solve(M[None], B[..., None])[..., 0]
        np.testing.assert_allclose(np.asarray(got), ref, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("n", [6, 21, 65])
@pytest.mark.parametrize("linalg", ["lapack", "jax"])
def test_gaussian_draw_is_the_mean_plus_the_inverse_factor_times_noise(n, linalg):
    """x = A^-1 b + L^-T z, at sizes the column loop handles (6, 21) and one the block recursion
    splits unevenly (65 = 32 + 33, down to leaves of 4 and 5 rows); and L against numpy."""
    rng = np.random.default_rng(n)
    X = rng.normal(size=(50, 3 * n, n))
    A = X.transpose(0, 2, 1) @ X / (3 * n) + 0.1 * np.eye(n)
    b, z = rng.normal(size=(2, 50, n))
    L_ref = np.linalg.cholesky(A)
    ref = np.linalg.solve(A, b[..., None])[..., 0] + np.linalg.solve(np.swapaxes(L_ref, 1, 2), z[..., None])[..., 0]
    f32 = lambda a: jnp.asarray(a, jnp.float32)  # noqa: E731
    got = jax.jit(gaussian_draw, static_argnums=3)(f32(A), f32(b), f32(z), linalg)
    np.testing.assert_allclose(np.asarray(got), ref, atol=2e-4 * np.abs(ref).max())
    L = cholesky(f32(A), linalg)
    np.testing.assert_allclose(np.asarray(L), L_ref, atol=2e-5 * np.abs(L_ref).max())
