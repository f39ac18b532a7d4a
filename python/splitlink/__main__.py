import sys

from splitlink.cli import main

sys.exit(main())
