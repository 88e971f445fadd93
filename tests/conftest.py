import os
from pathlib import Path

import pytest

# The suite compiles hundreds of small programs once each: LLVM at -O0 compiles them about a
# fifth faster than the default -O2, and what the tests check (the mathematics, not the speed)
# is the same. Subprocesses started by the tests inherit it; a user's own XLA_FLAGS win.
os.environ.setdefault("XLA_FLAGS", "--xla_backend_optimization_level=0")


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
