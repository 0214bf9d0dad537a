import sys

from infbench.cli.main import main

sys.exit(main())
