import sys

from nemo_craft.cli.main import main

sys.exit(main())
