import sys

from peftsft.commands.cli import main

sys.exit(main())
