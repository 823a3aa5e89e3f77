"""Writing files so that a failure (a full disk, a file-size limit, Ctrl-C) never leaves a half-written one.

Every file the CLI writes goes through `write_text`: the text goes to a temporary name in the same
folder, is flushed to disk, and is renamed over the target, which a reader then sees whole or not at all.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def write_text(path: Path | str, text: str) -> Path:
    """Write `text` to `path` atomically (same folder, then rename); on failure the old file is untouched."""
    path = Path(path)
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.chmod(tmp, _mode_for(path))
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        if tmp:
            Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError):  # name the file the caller asked for, not the temporary one
            raise OSError(e.errno, e.strerror, str(path)) from e
        raise
    return path


def _mode_for(path: Path) -> int:
    """The existing file's permissions, else what a plain open() would give (mkstemp's are 0600)."""
    try:
        return path.stat().st_mode & 0o777
    except OSError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask
