"""The README's examples run: every ``python`` block, top to bottom, as one script in a
fresh interpreter (blocks marked ``python no-run`` need outside resources)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"
BLOCK = re.compile(r"^```python([^\n]*)\n(.*?)^```", re.S | re.M)


def blocks() -> list[str]:
    return [code for info, code in BLOCK.findall(README.read_text()) if "no-run" not in info]


# The examples' caches register with the process-wide memory monitor, as a user's do.
# Their counts must not depend on how much memory this machine has free, so the script
# starts with a process-wide monitor that reads none (the monitor is not the subject).
CALM_MONITOR = """\
from netcache import process as _process
from netcache.pressure import MemoryPressureMonitor as _Monitor, MemoryReading as _Reading
_process.use_default_monitor(_Monitor(limit="1TiB", autostart=False,
                                      probe=lambda: _Reading(rss=0, available=1 << 50)))
"""


def test_readme_examples_run(tmp_path: Path) -> None:
    code = blocks()
    assert len(code) >= 10, "the README lost its examples"
    script = CALM_MONITOR + "\n\n".join(code) + "\nserver.stop()\nprint('README OK')\n"
    # With -c, Dask's worker processes have no main module to re-run.
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True,
        timeout=240, env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-4000:]
    assert result.stdout.rstrip().endswith("README OK")
