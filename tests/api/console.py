"""Running the installed `appliance` console script the way an admin would."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

APPLIANCE = Path(sys.executable).parent / "appliance"


def run_appliance(*args: str) -> subprocess.CompletedProcess[str]:
    """Run the console script; APPLIANCE_HOME comes from the autouse fixture through os.environ."""
    return subprocess.run(
        [str(APPLIANCE), *args],
        env=os.environ | {"NO_COLOR": "1", "COLUMNS": "200"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
