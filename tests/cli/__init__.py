"""CLI tests (a package, so module names never clash with tests/<area>/test_*.py)."""
