import sys

from sdapi.cli import main

sys.exit(main())
