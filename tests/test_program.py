"""The program layer: a prepared fit advanced chunk by chunk is the fit, and a second chunk
compiles nothing (the jitted step is traced once per program)."""

import inspect
import logging

import jax
import numpy as np
import pytest

from probmf.data.synthetic import synthetic_preset
from probmf.fitters import REGISTRY
from probmf.fitters.als import ALSConfig, fit_als, prepare_als
from probmf.fitters.gibbs import GibbsConfig, fit_gibbs, prepare_gibbs
from probmf.fitters.optax_mf import OptaxConfig, fit_optax, prepare_optax
from probmf.fitters.svi import SVIConfig, fit_svi, prepare_svi
from probmf.program import RunOptions, run_program

KEY = jax.random.PRNGKey(4)
SVI = {"rank": 3, "num_epochs": 4, "num_samples": 5}


# name: (prepare(key, train, options), options, the fitter, rtol of chunked vs whole). XLA may
# round a Gibbs scan of one sweep and one of several differently (`probmf.checkpoint.run_steps`).
PROGRAMS = {
    "als": (lambda k, t, o: prepare_als(k, t, ALSConfig(**o).validate()), {"rank": 3, "num_sweeps": 4}, fit_als, 0),
    "optax": (lambda k, t, o: prepare_optax(k, t, OptaxConfig(**o).validate()),
              {"rank": 3, "num_epochs": 4, "batch_size": 256}, fit_optax, 0),
    "gibbs": (lambda k, t, o: prepare_gibbs(k, t, GibbsConfig(**o).validate()),
              {"rank": 3, "num_warmup": 2, "num_samples": 2, "init_sweeps": 2}, fit_gibbs, 1e-4),
    "svi": (lambda k, t, o: prepare_svi(k, t, SVIConfig(**o).validate()), SVI, fit_svi, 0),
}  # fmt: skip


@pytest.fixture(scope="module")
def train():
    return synthetic_preset("tiny", seed=2)[0]


def _compiles(caplog, fn):
    """How many XLA compilations ``fn()`` triggers (`jax.log_compiles`, JAX's public switch)."""
    caplog.clear()
    with caplog.at_level(logging.WARNING), jax.log_compiles(True):
        fn()
    return sum("Compiling" in r.getMessage() for r in caplog.records)


# The sampler programs (gibbs, svi; ~25 s of compiling here) run with the slow checks.
@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in ("gibbs", "svi") else n
                                  for n in sorted(PROGRAMS)])  # fmt: skip
def test_chunks_compile_once_and_equal_the_fit(train, name, caplog):
    prepare, options, fit, rtol = PROGRAMS[name]
    program = prepare(KEY, train, options)
    states = [program.state]

    def chunk(first):
        return lambda: states.append(program.run_chunk(states[-1], first, 1))

    assert _compiles(caplog, chunk(0)) > 0  # the counter sees the first trace ...
    assert _compiles(caplog, chunk(1)) == 0  # ... and the second chunk reuses it
    stepped = program.finish(program.run_chunk(states[-1], 2, program.num_steps - 2))
    whole = fit(KEY, train, **options)
    for result in (stepped, run_program(program)):
        for a, b in zip(jax.tree.leaves(result), jax.tree.leaves(whole), strict=True):
            np.testing.assert_allclose(np.asarray(a, np.float64), np.asarray(b, np.float64), rtol=rtol, atol=rtol)


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_a_config_is_its_fitters_options_in_order(name):
    """Each registered ``fit_*`` builds its `Config` from its own keywords in order: the same
    names and defaults (but the fields the name fixes, AutoRec's ``item_based``; AutoRec-U
    keeps its own defaults), then the shared run options it takes."""
    fitter = REGISTRY[name]
    params = [p for p in inspect.signature(fitter.fit).parameters.values() if p.kind is inspect.Parameter.KEYWORD_ONLY]
    fields = [f for f in fitter.config._fields if f not in fitter.fixed]
    n = len(fields)
    assert [p.name for p in params[:n]] == fields
    if not fitter.fixed:
        assert {p.name: p.default for p in params[:n]} == fitter.config._field_defaults
    run = [p.name for p in params[n:]]
    assert run == [f for f in RunOptions._fields if f in run]
