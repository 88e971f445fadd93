"""Checkpoints of long runs: save the state every few steps, resume after an interruption.

A long run (ALS or Gibbs sweeps, optax or SVI epochs) is a loop of steps over a state pytree.
Given a checkpoint, `run_steps` cuts the loop into chunks of ``every`` steps and after each
chunk writes

    FOLDER/<name>-<fingerprint>.npz   "step" and the state's leaves "leaf_0", "leaf_1", ...

atomically (a temporary file in the same folder, then `os.replace`): a kill at any moment
leaves the previous checkpoint or the new one, never part of one. The fingerprint is a
SHA-256 of everything that determines the run (fitter, options, seed, training data), so a
run never resumes from another run's file and the folds of one evaluation can share a folder.
Resuming checks the leaves' count, shapes and dtypes against the fresh state and raises
`CheckpointError` naming the file on any mismatch; files are read with
``allow_pickle=False``, so loading one runs no code from it.

A run resumed from step s equals the uninterrupted run with the same ``every`` bit for bit
when each chunk depends only on (state, first step, length): per-step PRNG keys come from
``fold_in(key, step)``, never from a sequence of splits, and a host shuffle generator's
state is part of the saved state. The finished run's checkpoint is
kept: running the same command again returns the result without refitting.

Under ``jax.distributed`` (several processes, `probmf.sharding`) every process writes its own
file, ``<name>-<fingerprint>.process<i>-of-<n>.npz``, so hosts need no shared folder: the
state is gathered to every process (the factor tables are replicated there anyway; never the
ratings) and each keeps its previous file beside the new one (``.previous.npz``) until the
next save. Processes save after the same chunk and no process can start the next chunk (its
collectives) before every other has finished saving, so a kill at any moment leaves every
process holding the newest step that all of them reached: resuming, the processes agree on
the largest step they all hold and each reads its own file of that step.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import jax
import numpy as np
import scipy.sparse as sp

if TYPE_CHECKING:
    from probmf.data.partitioned import PartitionedRatings
    from probmf.data.ratings import Ratings


class CheckpointError(ValueError):
    """A checkpoint file that cannot be resumed from: corrupt, or of a differently shaped state."""


class Checkpoint(NamedTuple):
    """Where a run saves its state (``path``) and how often (every ``every`` steps)."""

    path: Path
    every: int


def fingerprint(*parts: Any) -> str:
    """SHA-256 (hex, 16 characters) of JSON-able parts and numpy arrays, in order."""
    h = hashlib.sha256()
    for part in parts:
        if isinstance(part, (np.ndarray, jax.Array)):
            a = np.ascontiguousarray(part)
            h.update(f"{a.dtype.str}{a.shape}".encode())
            h.update(a.tobytes())
        else:
            h.update(json.dumps(part, sort_keys=True, default=repr).encode())
    return h.hexdigest()[:16]


def matrix_digest(M: Any) -> dict:
    """{"shape", "sha1"} of a matrix (scipy.sparse or dense) by its canonical CSR form (float64
    data, sorted indices, duplicates summed, stored zeros dropped; int64 indices and indptr):
    what a fingerprint or a saved model's options record in place of the matrix."""
    M = sp.csr_matrix(M, dtype=np.float64, copy=True)
    M.sum_duplicates()
    M.eliminate_zeros()
    h = hashlib.sha1()
    for a in (M.data, M.indices.astype(np.int64), M.indptr.astype(np.int64)):
        h.update(np.ascontiguousarray(a).tobytes())
    return {"shape": [int(n) for n in M.shape], "sha1": h.hexdigest()}


def check_every(every: Any) -> int:
    """Validate ``checkpoint_every`` (a positive integer: steps between saves)."""
    if isinstance(every, bool) or int(every) != every or every < 1:
        raise ValueError(f"checkpoint_every must be a positive integer, got {every!r}")
    return int(every)


def checkpoint_for(folder: str | os.PathLike[str] | None, name: str, every: int, *parts: Any) -> Checkpoint | None:
    """The checkpoint of the run described by ``parts`` in ``folder`` (None: no checkpoints).

    ``every`` >= 1 steps between saves.
    """
    if folder is None:
        return None
    check_every(every)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    n = jax.process_count()
    process = "" if n == 1 else f".process{jax.process_index()}-of-{n}"
    return Checkpoint(folder / f"{name}-{fingerprint(name, *parts)}{process}.npz", int(every))


def _previous(path: Path) -> Path:
    """Where a multi-process run keeps a process's last file but one."""
    return path.with_name(path.name.removesuffix(".npz") + ".previous.npz")


def fit_checkpoint(
    folder: str | os.PathLike[str] | None,
    every: int,
    name: str,
    rng_key: jax.Array,
    train: Ratings | PartitionedRatings,
    options: dict,
    *extra: Any,
) -> Checkpoint | None:
    """`checkpoint_for` a fit of fitter ``name`` with ``options`` (everything but the
    checkpoint options), key ``rng_key`` and training `Ratings` ``train``; ``extra``: any
    further inputs (arrays or JSON-able)."""
    parts = (options, np.asarray(jax.random.key_data(rng_key)), train.num_users, train.num_items)
    from probmf.data import partitioned

    if isinstance(train, partitioned.PartitionedRatings):  # the hash of its ratings, taken when it was written
        return checkpoint_for(folder, name, every, *parts, train.digest, *extra)
    return checkpoint_for(folder, name, every, *parts, train.users, train.items, train.values, *extra)


def save(checkpoint: Checkpoint, step: int, state: Any) -> None:
    """Write ``state`` (a pytree of arrays) reached after ``step`` steps, atomically.

    Under ``jax.distributed`` a collective: every process calls it at the same step and writes
    its own file, keeping its previous one (see the module docstring)."""
    from probmf.sharding import to_host

    leaves = jax.tree.leaves(to_host(state))
    arrays: dict[str, Any] = {f"leaf_{i}": np.asarray(leaf) for i, leaf in enumerate(leaves)}
    arrays["step"] = np.int64(step)
    folder = checkpoint.path.parent
    fd, tmp = tempfile.mkstemp(prefix=f".{checkpoint.path.name}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        if jax.process_count() > 1 and checkpoint.path.exists():
            os.replace(checkpoint.path, _previous(checkpoint.path))
        os.replace(tmp, checkpoint.path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def restore(checkpoint: Checkpoint, state: Any) -> tuple[int, Any]:
    """(step, state) from the checkpoint file, or (0, ``state``) when there is none.

    ``state`` is the fresh state: it gives the tree structure, shapes and dtypes to expect.
    Under ``jax.distributed`` a collective: the processes resume from the largest step they
    all hold (a `CheckpointError` when they hold files but no common step), and each leaf
    that spans several processes' devices is rebuilt with the fresh leaf's sharding.
    """
    if jax.process_count() == 1:
        if not checkpoint.path.exists():
            return 0, state
        return _read(checkpoint.path, state)
    from jax.experimental import multihost_utils

    paths = [path for path in (checkpoint.path, _previous(checkpoint.path)) if path.exists()]
    held = [_read(path, state, step_only=True)[0] for path in paths]
    everyone = np.asarray(multihost_utils.process_allgather(np.array(held + [-1] * (2 - len(held)), np.int64)))
    if np.all(everyone == -1):
        return 0, state
    common = set(everyone[0].tolist())
    for steps in everyone[1:]:
        common &= set(steps.tolist())
    common.discard(-1)
    if not common:
        raise CheckpointError(
            f"{checkpoint.path}: the {len(everyone)} processes hold checkpoints of steps "
            f"{[sorted(set(s.tolist()) - {-1}) for s in everyone]} but none in common; delete them to start over"
        )
    step, restored = _read(paths[held.index(max(common))], state)

    def placed(fresh: Any, a: np.ndarray) -> Any:
        if isinstance(fresh, jax.Array) and not fresh.is_fully_addressable:
            return jax.make_array_from_callback(a.shape, fresh.sharding, lambda index: a[index])
        return a

    return step, jax.tree.map(placed, state, restored)


def _read(path: Path, state: Any, *, step_only: bool = False) -> tuple[int, Any]:
    """(step, state) of the file at ``path``, its leaves checked against ``state``'s; with
    ``step_only``, (step, None)."""
    leaves, treedef = jax.tree.flatten(state)
    try:
        with open(path, "rb") as fh, np.load(fh, allow_pickle=False) as f:
            step = int(f["step"])
            if step_only:
                return step, None
            files = dict(f)
        files.pop("step")
    except Exception as err:  # zip, header or key errors: all mean a damaged file
        raise CheckpointError(f"{path}: unreadable checkpoint ({err}); delete it to start over") from err
    if len(files) != len(leaves):
        raise CheckpointError(f"{path}: {len(files)} arrays, expected {len(leaves)}")
    restored = []
    for i, leaf in enumerate(leaves):
        # A leaf spanning other processes' devices cannot be read here, only described.
        a, want = files.get(f"leaf_{i}"), leaf if isinstance(leaf, (np.ndarray, jax.Array)) else np.asarray(leaf)
        if a is None or a.shape != want.shape or a.dtype != want.dtype:
            got = "missing" if a is None else f"{a.dtype}{a.shape}"
            raise CheckpointError(f"{path}: leaf_{i} is {got}, expected {np.dtype(want.dtype)}{want.shape}")
        restored.append(a)
    return step, jax.tree.unflatten(treedef, restored)


def run_steps(
    run_chunk: Callable,
    state: Any,
    num_steps: int,
    checkpoint: Checkpoint | None,
    *,
    finished: Callable | None = None,
    desc: str = "steps",
) -> Any:
    """``state <- run_chunk(state, first_step, num)`` over chunks until ``num_steps`` steps ran.

    Without a checkpoint: one chunk of all the steps. With one: resume from its file, then
    chunks of ``checkpoint.every`` steps, saving after each. ``finished(state)`` True ends the
    run early (e.g. early stopping); it is then saved as complete. A progress bar
    (`show_progress`) moves after each chunk; it never changes the chunks, since XLA may round
    a scan of another length differently (Gibbs differs by ~1e-7 between 1-step and 9-step
    chunks), and a result must not depend on whether a terminal was watching.
    """
    bar = _progress_bar(num_steps, desc)
    if checkpoint is None and bar is None:
        return run_chunk(state, 0, num_steps)
    step, every = 0, num_steps
    if checkpoint is not None:
        step, state = restore(checkpoint, state)
        every = checkpoint.every
        if step > num_steps:
            raise CheckpointError(f"{checkpoint.path}: at step {step}, past the run's {num_steps} steps")
    try:
        if bar is not None:
            bar.update(step)
        while step < num_steps:
            num = min(every, num_steps - step)
            state = run_chunk(state, step, num)
            done = num_steps if finished is not None and finished(state) else step + num
            if bar is not None:
                bar.update(done - step)
            step = done
            if checkpoint is not None:
                save(checkpoint, step, state)
    finally:
        if bar is not None:
            bar.close()
    return state


# ---- progress --------------------------------------------------------------------------------

_PROGRESS: ContextVar[bool | None] = ContextVar("probmf_progress", default=None)


@contextlib.contextmanager
def show_progress(on: bool | None = True) -> Iterator[None]:
    """Within this block, long runs (`run_steps`) show a tqdm bar on stderr (``on=True``),
    none (False), or one only in an interactive session (None, the default outside it).
    The bar moves per checkpoint chunk (``checkpoint_every`` steps), else once at the end of
    the run, showing its time; it never changes a result."""
    token = _PROGRESS.set(on)
    try:
        yield
    finally:
        _PROGRESS.reset(token)


def _progress_bar(total: int, desc: str) -> Any:
    on = _PROGRESS.get()
    if on is None:
        on = hasattr(sys, "ps1") or "ipykernel" in sys.modules
    if not on or total < 2:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="step", leave=False, file=sys.stderr)
