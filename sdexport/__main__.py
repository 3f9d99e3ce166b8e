"""`python -m sdexport` runs the sdexport command (where the package is on the path but not installed)."""

from sdexport.cli import main

main()
