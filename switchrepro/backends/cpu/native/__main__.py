import sys

from switchrepro.backends.cpu.native import main

sys.exit(main())
