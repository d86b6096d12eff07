"""Run every ``bench/bench_*.py`` script and write their Markdown sections to one file.

Each script prints one Markdown section on stdout (heading, table, verdict) and records
the machine and versions itself; this runner adds a header and concatenates them.

Usage: ``python bench/run_all.py --out BENCHMARKS.md [--quick] [--only NAME ...]``
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("BENCHMARKS.md"))
    parser.add_argument("--quick", action="store_true", help="pass --quick to scripts")
    parser.add_argument("--only", nargs="*", default=None, help="script names to run")
    args = parser.parse_args()
    scripts = sorted(HERE.glob("bench_*.py"))
    if args.only:
        scripts = [s for s in scripts if any(o in s.stem for o in args.only)]
    sections = [
        "# cytostore benchmarks\n",
        f"Written by `make bench` on {dt.date.today()} — {platform.node()}, "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}. Each section times a baseline and the "
        "subject in the same run and reports the ratio.\n",
    ]
    failed = 0
    for script in scripts:
        print(f"running {script.name} ...", file=sys.stderr, flush=True)
        cmd = [sys.executable, str(script)] + (["--quick"] if args.quick else [])
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            failed += 1
            sections.append(
                f"## {script.stem}\n\nFAILED (exit {proc.returncode}):\n\n```\n"
                f"{proc.stderr[-2000:]}\n```\n"
            )
        else:
            sections.append(proc.stdout.strip() + "\n")
    args.out.write_text("\n".join(sections))
    print(
        f"wrote {args.out} ({len(scripts)} scripts, {failed} failed)", file=sys.stderr
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
