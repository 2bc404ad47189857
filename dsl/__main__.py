"""`python -m tdsl` runs the command-line interface."""

from tdsl.cli import main

raise SystemExit(main())
