import sys

from mplstm.cli import main

sys.exit(main())
