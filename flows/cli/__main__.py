import sys

from macd_ml.flows.cli import main

sys.exit(main())
