import sys

from infbench.cli import main

sys.exit(main())
