"""``python -m imgsmith``: the same CLI as the ``imgsmith`` script."""

import sys

from .cli.main import main

sys.exit(main())
