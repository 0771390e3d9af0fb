"""The `streamer` package as another commit had it, for benchmarks that measure code before and after in one run.

  with code_at("2403843") as tree:
      subprocess.run([sys.executable, "-m", "streamer.cli", "run", "--config", path], cwd=tree, env=env_for(tree))

A child process started in `tree` (cwd, and `PYTHONPATH` for scripts run by path)
imports that commit's `streamer`, ahead of the installed checkout. `REPO` is this
checkout's own tree, working-tree changes included.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import tarfile
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

REPO = Path(__file__).resolve().parent.parent


@contextmanager
def code_at(rev: str) -> Iterator[Path]:
    """A temporary folder holding `rev`'s streamer/ (git archive); SystemExit if git cannot give it."""
    try:
        archive = subprocess.run(
            ["git", "-C", str(REPO), "archive", "--format=tar", rev, "streamer"], capture_output=True, check=True
        ).stdout
    except (OSError, subprocess.CalledProcessError) as e:
        detail = e.stderr.decode().strip() if isinstance(e, subprocess.CalledProcessError) else str(e)
        raise SystemExit(f"cannot take streamer/ at {rev!r} from the git history of {REPO}: {detail}") from None
    folder = Path(tempfile.mkdtemp(prefix=f"vad-code-{rev[:12]}-"))
    try:
        with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
            tar.extractall(folder, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def env_for(tree: Path) -> dict[str, str]:
    """The environment for a child process that must import `streamer` from `tree`."""
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(tree), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
    }
