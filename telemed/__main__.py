"""`python -m telemed`: the same as the `telemed` command."""

import sys

from telemed.cli import main

sys.exit(main())
