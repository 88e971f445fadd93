"""The program layer: a prepared fit advanced chunk by chunk is the fit, and a second chunk
compiles nothing (the jitted step is traced once per program)."""

import logging

import jax
import numpy as np
import pytest

from probmf.data.synthetic import synthetic_preset
from probmf.fitters.als import ALSConfig, fit_als, prepare_als
from probmf.fitters.optax_mf import OptaxConfig, fit_optax, prepare_optax
from probmf.program import run_program

KEY = jax.random.PRNGKey(4)
PROGRAMS = {
    "als": (prepare_als, ALSConfig(rank=3, num_sweeps=4), fit_als),
    "optax": (prepare_optax, OptaxConfig(rank=3, num_epochs=4, batch_size=256), fit_optax),
}


@pytest.fixture(scope="module")
def train():
    return synthetic_preset("tiny", seed=2)[0]


def _compiles(caplog, fn):
    """How many XLA compilations ``fn()`` triggers (`jax.log_compiles`, JAX's public switch)."""
    caplog.clear()
    with caplog.at_level(logging.WARNING), jax.log_compiles(True):
        fn()
    return sum("Compiling" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("name", sorted(PROGRAMS))
def test_chunks_compile_once_and_equal_the_fit(train, name, caplog):
    prepare, config, fit = PROGRAMS[name]
    program = prepare(KEY, train, config.validate())
    states = [program.state]

    def chunk(first):
        return lambda: states.append(program.run_chunk(states[-1], first, 1))

    assert _compiles(caplog, chunk(0)) > 0  # the counter sees the first trace ...
    assert _compiles(caplog, chunk(1)) == 0  # ... and the second chunk reuses it
    stepped = program.finish(program.run_chunk(states[-1], 2, program.num_steps - 2))
    whole = fit(KEY, train, **config._asdict())
    for a, b in zip(jax.tree.leaves(stepped.params), jax.tree.leaves(whole.params), strict=True):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(jax.tree.leaves(run_program(program).params)[0], whole.params.W)
