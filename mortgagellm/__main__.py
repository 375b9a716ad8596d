"""`python -m mortgagellm` is the `mortgagellm` command."""

import sys

from mortgagellm.cli import main

sys.exit(main())
