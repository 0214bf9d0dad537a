"""`python -m servers.tfserving ...`: the server's entry point (servers.tfserving.main)."""

import sys

from servers.tfserving.main import main

sys.exit(main())
