"""The floors of DESIGN.md hold: import-linter's contracts in pyproject.toml."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_import_contracts__floors_store_api_no_torch_no_circle() -> None:
    exe = shutil.which("lint-imports") or str(
        Path(sys.executable).parent / "lint-imports"
    )
    result = subprocess.run(
        [exe, "--no-cache"], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    # All four contracts ran (an empty config would also exit 0).
    assert "Contracts: 4 kept, 0 broken." in result.stdout
