"""``python -m pyrtpproxy``."""

from .cli import main

main()
