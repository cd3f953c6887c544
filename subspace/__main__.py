"""`python -m subspace ...`: see :mod:`subspace.cli`."""

from .cli import main

raise SystemExit(main())
