"""``python -m ponder.cli`` is the ``ponder`` command."""

import sys

from ponder.cli.main import main

sys.exit(main())
