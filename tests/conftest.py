import os
from pathlib import Path

import pytest

# The suite compiles hundreds of small programs once each: LLVM at -O0 compiles them about a
# fifth faster than the default -O2, and what the tests check (the mathematics, not the speed)
# is the same. Subprocesses started by the tests inherit it; a user's own XLA_FLAGS win.
os.environ.setdefault("XLA_FLAGS", "--xla_backend_optimization_level=0")


# Read once at start-up, before any test's monkeypatch moves it (xdist workers inherit it).
DATA_DIR = os.environ.get("PROBMF_DATA_DIR")
_MOVIELENS_SKIPS = []


def _skipped_for_movielens(item, report) -> bool:
    """A skip for missing MovieLens data: its reason names MovieLens or PROBMF_DATA_DIR (as
    every skip of ``ml100k_dir`` does); xfails are not skips. The one exception is the
    optional ua/ub split files, which not every copy of ML-100K ships (`_use_real`)."""
    if not report.skipped or hasattr(report, "wasxfail"):
        return False
    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
    return "movielens" in reason.lower() or "probmf_data_dir" in reason.lower()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """With $PROBMF_DATA_DIR set, a MovieLens test that skips for missing data FAILS: the data
    was promised, so its absence is an error, not a silent skip under -q. Runs where the test
    runs (an xdist worker too); the report it sends is already a failure."""
    report = (yield).get_result()
    if not _skipped_for_movielens(item, report):
        return
    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
    if DATA_DIR:
        report.outcome = "failed"
        report.longrepr = f"PROBMF_DATA_DIR={DATA_DIR} is set, but this MovieLens test skipped: {reason}"
    else:
        report.user_properties.append(("movielens_skip", reason))


def pytest_runtest_logreport(report):
    if any(name == "movielens_skip" for name, _ in report.user_properties):
        _MOVIELENS_SKIPS.append(report.nodeid)


def pytest_terminal_summary(terminalreporter):
    if _MOVIELENS_SKIPS:
        terminalreporter.write_line(
            f"NOTE: {len(_MOVIELENS_SKIPS)} MovieLens tests skipped: set PROBMF_DATA_DIR to a folder holding ml-100k "
            "(with it set, a missing data set fails these tests)",
            yellow=True,
        )


def _memory_maps() -> tuple[int, int]:
    """(memory mappings this process holds, the kernel's limit vm.max_map_count); (0, 1) where
    /proc cannot tell."""
    try:
        with open("/proc/self/maps") as maps, open("/proc/sys/vm/max_map_count") as limit:
            return sum(1 for _ in maps), int(limit.read())
    except (OSError, ValueError):
        return 0, 1


@pytest.fixture(autouse=True)
def _release_compiled_programs():
    """Drop JAX's compiled programs once they hold a third of the process's memory mappings.

    Each XLA-CPU executable keeps its code in mappings of its own (a Gibbs chain: thousands),
    and JAX's caches keep every executable alive. A worker that runs many fits would pass the
    kernel's vm.max_map_count (65,530 by default), and XLA then aborts the process in the
    middle of a compile. Clearing costs only recompiles of programs that a later test shares.
    """
    yield
    held, limit = _memory_maps()
    if held > limit // 3:
        import jax

        jax.clear_caches()


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    """No network, no real data folder, a fresh cache under tmp_path (returned)."""
    from probmf.data import movielens

    def no_network(url, dest):
        raise AssertionError(f"test tried to download {url}")

    monkeypatch.setattr(movielens, "_fetch", no_network)
    monkeypatch.delenv("PROBMF_DATA_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))
    return tmp_path / "xdg-cache" / "probmf"


@pytest.fixture(scope="session")
def ml100k_dir():
    """$PROBMF_DATA_DIR/ml-100k, or skip with the reason."""
    root = os.environ.get("PROBMF_DATA_DIR")
    if not root:
        pytest.skip("PROBMF_DATA_DIR is not set; MovieLens 100K tests need $PROBMF_DATA_DIR/ml-100k")
    path = Path(root) / "ml-100k"
    if not (path / "u1.base").is_file():
        pytest.skip(f"MovieLens 100K not found in {path}")
    return path
