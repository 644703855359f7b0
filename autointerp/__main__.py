"""`python -m autointerp` runs the same CLI as the `autointerp` console script."""

from autointerp.cli import main

raise SystemExit(main())
