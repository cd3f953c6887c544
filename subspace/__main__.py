"""`python -m subspace ...`: see :mod:`subspace.cli`."""

import os

# Before torch loads: idle OpenMP threads sleep instead of spinning, so a busy machine (or
# parallel runs) does not stall the solver's many small parallel sections.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from .cli import main  # noqa: E402

raise SystemExit(main())
