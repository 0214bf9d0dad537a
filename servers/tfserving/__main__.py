"""`python -m servers.tfserving ...`: servers.tfserving.main.main."""

import sys

from servers.tfserving.main import main

sys.exit(main())
