"""Entry point: `python -m benchmarks [--sizes tiny,small,full] [--quick] [--long]`."""

import sys

from .run import main

sys.exit(main())
