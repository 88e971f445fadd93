"""The epoch loop of every minibatch fitter, with early stopping and checkpoints.

`epoch_program` is the `probmf.program.Program` of up to E epochs of any ``epoch_step``; its
state, `LoopState`, is everything the loop needs in one pytree (parameters, optimiser state,
the per-epoch traces, the early-stopping record, and the host shuffle generator's state),
saved every ``checkpoint.every`` epochs. Since the generator's state travels with the rest, a
resumed run continues the very same shuffle stream: it equals the uninterrupted run, and a run
with checkpoints equals one without, bit for bit. A run that stops early is saved as finished.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from probmf import checkpoint as ckpt
from probmf.program import Program, run_program


class LoopState(NamedTuple):
    """Everything an epoch loop needs to go on (the checkpointed pytree); E = num_epochs.

    Attributes:
      params, opt_state: the model parameters and optimiser state after ``epochs_run`` epochs.
      train_loss, val_rmse: float64 (E,) per-epoch traces, NaN past ``epochs_run`` (and
        everywhere for a loss or score not computed).
      best_score: float64 () lowest validation RMSE (inf before any); best_epoch: int64 ().
      best_params: the parameters of ``best_epoch`` (None without validation).
      epochs_run: int64 () epochs run; stopped: bool () early stopping has triggered.
      shuffle: uint64 (6,) state of the host shuffle generator (PCG64).
    """

    params: Any
    opt_state: Any
    train_loss: np.ndarray
    val_rmse: np.ndarray
    best_score: np.ndarray
    best_epoch: np.ndarray
    best_params: Any
    epochs_run: np.ndarray
    stopped: np.ndarray
    shuffle: np.ndarray


_MASK64 = (1 << 64) - 1


def _generator_state(rng: np.random.Generator) -> np.ndarray:
    """The PCG64 state of ``rng`` as uint64 (6,): state and increment (high, low words), and
    the buffered 32-bit draw."""
    s = rng.bit_generator.state
    if s["bit_generator"] != "PCG64":
        raise ValueError(f"the shuffle generator must be PCG64, got {s['bit_generator']}")
    st, inc = s["state"]["state"], s["state"]["inc"]
    words = (st >> 64, st & _MASK64, inc >> 64, inc & _MASK64, s["has_uint32"], s["uinteger"])
    return np.array(words, np.uint64)


def _generator(words: np.ndarray) -> np.random.Generator:
    """The generator whose state `_generator_state` encoded."""
    a = [int(w) for w in np.asarray(words)]
    rng = np.random.Generator(np.random.PCG64())
    rng.bit_generator.state = {
        "bit_generator": "PCG64",
        "state": {"state": (a[0] << 64) | a[1], "inc": (a[2] << 64) | a[3]},
        "has_uint32": a[4],
        "uinteger": a[5],
    }
    return rng


def _to_device(tree: Any) -> Any:
    return jax.tree.map(jnp.asarray, tree)


def run_epochs(*args: Any, checkpoint: ckpt.Checkpoint | None = None, **options: Any) -> LoopState:
    """Up to ``num_epochs`` epochs of ``epoch_step``, early stopping, and checkpoints: the
    `epoch_program` of the same arguments run by `probmf.program.run_program`, saving to
    ``checkpoint`` (`probmf.checkpoint.checkpoint_for`; None: no checkpoints)."""
    return run_program(epoch_program(*args, **options)._replace(checkpoint=checkpoint))


def epoch_program(
    epoch_step: Callable,
    params: Any,
    opt_state: Any,
    num_epochs: int,
    rng: np.random.Generator,
    *,
    score_fn: Callable | None = None,
    patience: int | None = None,
    place: Callable | None = None,
) -> Program:
    """The `Program` of up to ``num_epochs`` epochs of ``epoch_step`` with early stopping;
    its state is a `LoopState`, and it finishes as the final `LoopState`.

    Args:
      epoch_step: ``(params, opt_state, epoch, rng) -> (params, opt_state, loss)``: one epoch,
        shuffling with the numpy generator ``rng``; ``loss`` () may be None (not traced).
      params: the initial parameters (a pytree).
      opt_state: the initial optimiser state (a pytree).
      num_epochs: most epochs.
      rng: the host shuffle generator (PCG64, e.g. ``np.random.default_rng(seed)``).
      score_fn: ``params -> float`` validation RMSE after each epoch (None: no validation).
      patience: stop after this many epochs without a lower score (None: never stop).
      place: puts a pytree of arrays where the epoch runs (default: `jnp.asarray` each leaf).
    Returns:
      The program; its finished `LoopState`'s arrays are placed by ``place``.
    """
    place = place or _to_device
    state = LoopState(
        params=params,
        opt_state=opt_state,
        train_loss=np.full(num_epochs, np.nan),
        val_rmse=np.full(num_epochs, np.nan),
        best_score=np.array(np.inf),
        best_epoch=np.array(0, np.int64),
        best_params=params if score_fn is not None else None,
        epochs_run=np.array(0, np.int64),
        stopped=np.array(False),
        shuffle=_generator_state(rng),
    )

    def run_chunk(state: LoopState, first: int, num: int) -> LoopState:
        if bool(state.stopped):
            return state
        rng = _generator(state.shuffle)
        params, opt_state = place((state.params, state.opt_state))
        losses, scores = state.train_loss.copy(), state.val_rmse.copy()
        best_score, best_epoch, best_params = float(state.best_score), int(state.best_epoch), state.best_params
        stopped, done = False, first
        for e in range(first, first + num):
            params, opt_state, loss = epoch_step(params, opt_state, e, rng)
            losses[e] = np.nan if loss is None else float(loss)
            done = e + 1
            if score_fn is None:
                continue
            score = float(score_fn(params))
            scores[e] = score
            if score < best_score:
                best_score, best_epoch, best_params = score, e, params
            elif patience is not None and e - best_epoch >= patience:
                stopped = True
                break
        new = LoopState(
            params, opt_state, losses, scores, np.array(best_score), np.array(best_epoch, np.int64), best_params,
            np.array(done, np.int64), np.array(stopped), _generator_state(rng),
        )  # fmt: skip
        return new

    def finish(state: LoopState) -> LoopState:
        best = None if state.best_params is None else place(state.best_params)
        return state._replace(params=place(state.params), opt_state=place(state.opt_state), best_params=best)

    return Program(state, run_chunk, finish, int(num_epochs), finished=lambda s: bool(s.stopped), desc="epochs")
