"""How reliable is the store's boundary? Attacks, kills, threads and fuzz, counted.

Runs the reliability suites of ``tests/`` once (pytest, JUnit XML) and counts what
each tried and what got through:

- **attacks**: ``tests/test_attacks.py``: SQL strings for ``cytostore sql`` and
  filters for every ``--where`` command (and column names for ``--label``/``--by``);
  an attack *escaped* when its test failed (exit not 2, a traceback, a file changed
  in the store or written outside it);
- **kills**: every test that SIGKILLs a real command at a fault point
  (``cytostore.store.faults``) and reruns it, per command; *survived* = the rerun
  completed and the store checked whole;
- **threads**: ``tests/store/test_threads.py``: one ``Store`` shared by 8 threads x
  200 mixed calls (and readers during a commit), answers equal to one thread's;
- **fuzz**: ``tests/data/test_ingest_fuzz.py`` (hypothesis, derandomised): random,
  truncated and mutated image bytes under real TCIA names; a crash is a failure.

This is a count, not a timing: there is no baseline ratio. The sandbox's cost is
``bench_sandbox.py``.

Usage: ``python bench/bench_reliability.py [--quick]``
"""

from __future__ import annotations

import argparse
import ast
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

KILL_TESTS = {
    "ingest": "tests/data/test_ingest.py -k killed",
    "embed": "tests/test_kill_matrix.py -k embed tests/embedder/test_embed.py -k kill",
    "merge": "tests/test_kill_matrix.py -k merge",
    "neighbors --into": "tests/test_kill_matrix.py -k neighbors",
    "pretrain --resume": "tests/test_kill_matrix.py -k pretrain",
    "probe/mil head save": "tests/heads/test_head_files.py -k killed",
    "rm (model, patient)": "tests/store/test_remove.py -k killed",
    "build-index": "tests/store/test_set_locks.py -k killed",
    "export": "tests/store/test_export_completeness.py -k fault",
}


def _run(args: list[str]) -> list[tuple[str, bool]]:
    """Run pytest on ``args``; return ``(test id, passed)`` for each test run."""
    with tempfile.TemporaryDirectory() as tmp:
        xml = Path(tmp) / "junit.xml"
        subprocess.run(
            [sys.executable, "-m", "pytest", "-q", f"--junitxml={xml}", *args],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=False,
        )
        out = []
        for case in ET.parse(xml).getroot().iter("testcase"):
            if case.find("skipped") is not None:
                continue
            failed = case.find("failure") is not None or case.find("error") is not None
            out.append((f"{case.get('classname')}::{case.get('name')}", not failed))
        return out


def _split(spec: str) -> list[list[str]]:
    """``"a.py -k x b.py -k y"`` -> one pytest argument list per file."""
    parts, out = spec.split(), []
    for i, p in enumerate(parts):
        if p.endswith(".py"):
            out.append(
                [p, *(parts[i + 1 : i + 3] if parts[i + 1 : i + 2] == ["-k"] else [])]
            )
    return out


def _constants(path: Path, names: tuple[str, ...]) -> dict[str, object]:
    tree = ast.parse(path.read_text())
    found: dict[str, object] = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target = node.targets[0]
            if isinstance(target, ast.Name) and target.id in names:
                found[target.id] = ast.literal_eval(node.value)
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="(no effect: counts)")
    parser.parse_args()
    attacks = _run(["tests/test_attacks.py"])
    by_kind = Counter()
    escaped = Counter()
    for test_id, ok in attacks:
        kind = (
            "sql"
            if "test_sql__attack" in test_id
            else "--where"
            if "test_where__attack" in test_id
            else "--label/--by"
            if "test_column_option__attack" in test_id
            else None
        )
        if kind:
            by_kind[kind] += 1
            escaped[kind] += not ok
    kills: list[tuple[str, int, int]] = []
    for command, spec in KILL_TESTS.items():
        results = [r for args in _split(spec) for r in _run(args)]
        kills.append((command, len(results), sum(ok for _, ok in results)))
    threads = _run(["tests/store/test_threads.py"])
    fuzz = _run(["tests/data/test_ingest_fuzz.py"])
    fuzz_consts = _constants(
        ROOT / "tests/data/test_ingest_fuzz.py",
        ("FUZZ_EXAMPLES", "FUZZ_MIN_FILES", "FUZZ_MAX_FILES"),
    )

    print("## Reliability: attacks, kills, threads, fuzz (`bench_reliability.py`)\n")
    print("Counts from one run of the reliability suites (no timing).\n")
    print("| suite | tried | got through | verdict |")
    print("|---|---:|---:|---|")
    for kind in ("sql", "--where", "--label/--by"):
        print(
            f"| attacks on `{kind}` (exit 2, one line, store unchanged) | "
            f"{by_kind[kind]} | {escaped[kind]} escaped | "
            f"{'ok' if by_kind[kind] and not escaped[kind] else 'FAIL'} |"
        )
    for command, tried, survived in kills:
        print(
            f"| kills of `{command}` at fault points, then rerun | {tried} | "
            f"{tried - survived} not survived | "
            f"{'ok' if tried and survived == tried else 'FAIL'} |"
        )
    t_ok = sum(ok for _, ok in threads)
    print(
        f"| one `Store`, 8 threads x 200 mixed calls (+ readers during a commit, "
        f"two index builds) | {len(threads)} tests | {len(threads) - t_ok} failed | "
        f"{'ok' if threads and t_ok == len(threads) else 'FAIL'} |"
    )
    f_ok = all(ok for _, ok in fuzz) and bool(fuzz)
    print(
        f"| ingest fuzz: {fuzz_consts.get('FUZZ_EXAMPLES')} examples of "
        f"{fuzz_consts.get('FUZZ_MIN_FILES')}-{fuzz_consts.get('FUZZ_MAX_FILES')} "
        f"files under TCIA names | {fuzz_consts.get('FUZZ_EXAMPLES')} | "
        f"{0 if f_ok else 'crash'} | {'ok' if f_ok else 'FAIL'} |"
    )
    total_kills = sum(t for _, t, _ in kills)
    total_survived = sum(s for _, _, s in kills)
    print(
        f"\nVerdict: {sum(by_kind.values())} attacks, {sum(escaped.values())} escaped; "
        f"{total_kills} kills, {total_survived} survived."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
