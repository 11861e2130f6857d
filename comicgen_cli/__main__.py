"""`python -m comicgen_cli ...`, the same as the `comicgen` console script."""

from __future__ import annotations

from comicgen_cli.main import main

if __name__ == "__main__":
    main()
