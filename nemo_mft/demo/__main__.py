import sys

from nemo_mft.demo.run import main

sys.exit(main())
