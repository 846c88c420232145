"""`python -m tokserve`, the same as the `tokserve` command."""

from tokserve.cli import main

main()
