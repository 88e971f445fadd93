"""The middle layer of every iterative fitter: a `Program`, and the loop that runs one.

    kernel    step(rng_key, state, data) -> (state, info)       pure, jit-able (e.g. `als_sweep`)
    program   prepare(rng_key, train, config, run) -> Program   per fitter; no loop inside
    driver    run_program(program) -> result                     one loop for all of them

A fitter's ``prepare`` validates nothing the ``Config`` has not (``config.validate()``),
encodes the data, places it on ``run.devices`` and returns the initial state with the two
functions that advance and finish it. `run_program` cuts the ``num_steps`` steps into chunks
(`probmf.checkpoint.run_steps`: checkpoints, progress bar, early stop through ``finished``)
and finishes. So a benchmark, a notebook or a user's own loop can drive any fitter step by
step with ``program.run_chunk(state, first, num)``, and the result is the fitter's own.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

from probmf.checkpoint import Checkpoint, run_steps


class RunOptions(NamedTuple):
    """How a program runs, shared by every fitter (not part of its model): ``devices`` to
    split rows or batches over; ``checkpoint`` folder (None: none) saved every
    ``checkpoint_every`` steps; ``progress`` bar (None: in interactive sessions)."""

    devices: int = 1
    checkpoint: str | None = None
    checkpoint_every: int = 5
    progress: bool | None = None


DEFAULT_RUN = RunOptions()


class Program(NamedTuple):
    """A prepared fit.

    state: the pytree a checkpoint saves (device arrays and host numpy traces).
    run_chunk: ``(state, first, num) -> state``, steps first .. first + num - 1; per-step
      keys are folded from the step number, so chunking never changes the result.
    finish: ``state -> result`` (the fitter's result type).
    num_steps: the steps of a full run (sweeps, epochs).
    finished: ``state -> bool``, True ends the run early (early stopping); None: never.
    desc: what a step is, for the progress bar ("ALS sweeps", "epochs", ...).
    checkpoint: where ``state`` is saved and resumed from (`probmf.checkpoint.fit_checkpoint`,
      fingerprinted by the fitter's options, key and data: ``prepare`` makes it from
      ``run.checkpoint``); None: no checkpoints.
    """

    state: Any
    run_chunk: Callable
    finish: Callable
    num_steps: int
    finished: Callable | None = None
    desc: str = "steps"
    checkpoint: Checkpoint | None = None


def run_program(program: Program) -> Any:
    """Run ``program`` to its end (resuming from and saving to its checkpoint) and finish it."""
    state = run_steps(program.run_chunk, program.state, program.num_steps, program.checkpoint,
                      finished=program.finished, desc=program.desc)  # fmt: skip
    return program.finish(state)


def staged_program(run: Callable[[], Any], desc: str) -> Program:
    """The `Program` of a fit made of stages that are programs themselves, or of none: one
    step that calls ``run()`` (e.g. AutoRec's early-stopped run, then its refit on all the
    ratings; each stage saves its own checkpoints) and finishes with its result. A closed-form
    fit (the truncated SVD) or one NumPyro runs whole (NUTS) is a one-step program too, so
    every fitter goes through the same driver."""
    return Program(None, lambda state, first, num: run(), lambda result: result, 1, desc=desc)
