import sys

from mobilevit.cli import main

sys.exit(main())
