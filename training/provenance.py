"""Where a card comes from: the code's commit and the time it was written."""

from __future__ import annotations

import datetime
import subprocess
from pathlib import Path


def git_commit() -> str:
    """The checkout's commit, '-dirty' when tracked files differ from it; 'unknown' outside a git checkout."""
    try:
        root = Path(__file__).resolve().parent.parent
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=root, capture_output=True, text=True
        ).stdout.strip()
        return commit + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
