import sys

from mfucli.main import main

sys.exit(main())
