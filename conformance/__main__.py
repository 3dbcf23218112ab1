"""`python -m conformance run …`, the same as `xds conformance run …`."""
import sys

from .cli import main

sys.exit(main())
