"""Making a file's creation or rename survive a power loss: fsync the directory that names it
(POSIX keeps directory entries apart from file contents, so fsyncing the file alone is not enough)."""
from __future__ import annotations

import os
from pathlib import Path


def fsync_dir(path: Path | str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
