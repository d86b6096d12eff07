"""Web app tests (a package, so module names never clash elsewhere)."""
