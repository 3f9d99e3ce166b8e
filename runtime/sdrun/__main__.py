"""`python -m sdrun` runs the sdrun command."""

from sdrun.cli import main

main()
