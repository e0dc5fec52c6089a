"""`python -m switchrepro.cli ...`: the command line (how `run --workers` starts its child processes)."""

from switchrepro.cli import main

main()
