"""Allow ``python -m semisam``."""
import sys

from semisam.cli import main

sys.exit(main())
