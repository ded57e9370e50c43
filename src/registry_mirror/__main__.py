import sys

from registry_mirror.cli import main

sys.exit(main())
