import sys

from .cli._serve import main

sys.exit(main())
