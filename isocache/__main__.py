import sys

from isocache.cli import main

sys.exit(main())
