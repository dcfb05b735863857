"""``python -m core`` is the same as the ``inve`` console script."""
import sys

from core.cli import main

sys.exit(main())
