"""Archives checked before they are trusted: a file's SHA-256 (`sha256_file`), and zip
extraction that refuses links, special files and members that would land outside the target
folder (`_safe_extract`, raising `UnsafeArchiveError`). Used by the MovieLens download and by
saved models; nothing here is specific to either."""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import zipfile
from pathlib import Path


def sha256_file(file: Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(file, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class UnsafeArchiveError(ValueError):
    """A zip archive holds a member that would be written outside the target folder, or a link."""


def _safe_extract(zf: zipfile.ZipFile, dest: str | os.PathLike[str]) -> None:
    """Extract every member of ``zf`` under ``dest``, refusing unsafe members before writing.

    Raises:
      UnsafeArchiveError: a member is a link or special file, or its path (absolute, or with
        ``..``) resolves outside ``dest``.
    """
    root = os.path.realpath(dest)
    where = zf.filename or "zip archive"
    plan = []
    for info in zf.infolist():
        mode = info.external_attr >> 16
        if stat.S_ISLNK(mode):
            raise UnsafeArchiveError(f"{where}: member {info.filename!r} is a symbolic link; refusing to extract")
        if stat.S_IFMT(mode) not in (0, stat.S_IFREG, stat.S_IFDIR):
            raise UnsafeArchiveError(f"{where}: member {info.filename!r} is not a regular file; refusing to extract")
        target = os.path.realpath(os.path.join(root, info.filename))
        inside = os.path.commonpath([root, target]) == root and (target != root or info.is_dir())
        if not inside:
            raise UnsafeArchiveError(
                f"{where}: member {info.filename!r} would be written outside {root}; refusing to extract"
            )
        plan.append((info, target))
    for info, target in plan:
        if info.is_dir():
            os.makedirs(target, exist_ok=True)
            continue
        os.makedirs(os.path.dirname(target), exist_ok=True)
        try:
            with zf.open(info) as src, open(target, "xb") as out:
                shutil.copyfileobj(src, out, 1 << 20)
        except FileExistsError:
            raise UnsafeArchiveError(f"{where}: member {info.filename!r} appears twice") from None
