"""CLI tests (a package, so their module names never clash with tests/<area>/test_*.py)."""
