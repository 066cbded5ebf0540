import sys

from tiercel.cli import main

sys.exit(main())
