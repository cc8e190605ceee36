import sys

from gpner.cli import main

sys.exit(main())
