"""``python -m pipeline.cli``: the ``digest`` command."""

from .base import main

main()
