"""``python -m gramprompt.cli``: the same program as ``gram``."""
import sys

from . import main

sys.exit(main())
