"""`python -m credit_compile`: the `credit-compile` command."""

import sys

from .cli import main

sys.exit(main())
