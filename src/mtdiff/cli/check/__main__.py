import sys

from . import main

sys.exit(1 if main().get("failed") else 0)
