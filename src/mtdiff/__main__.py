"""``python -m mtdiff`` (also what ``torchrun -m mtdiff`` runs)."""

import sys

from .cli.main import main

sys.exit(main())
