import sys

from switchrepro.native import main

sys.exit(main())
