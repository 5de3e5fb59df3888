"""``python -m shardeval``: the same command line as the ``shardeval`` console script."""

import sys

from shardeval.workflows.cli import main

sys.exit(main())
