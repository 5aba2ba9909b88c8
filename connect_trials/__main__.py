import sys

from connect_trials.cli import main

sys.exit(main())
