"""`python -m training <stage> ...` (the same CLI the gateway mounts as `aligngate train`)."""

import sys

from training.cli import main

sys.exit(main())
