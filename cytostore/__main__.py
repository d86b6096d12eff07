"""Run the command line: ``python -m cytostore``."""

from cytostore.cli import main

if __name__ == "__main__":
    main()
