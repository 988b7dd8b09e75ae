"""SMARTER's labgrid additions: the strategy that takes any board from off to
flashed to booted to a shell, and the resource that says what a board has.

Environment files import this package by name (`imports: [smarter_hil]`),
so its classes register with labgrid once however many environments load.
"""

from .board import SmarterBoard  # noqa: F401
from .strategy import SmarterStrategy  # noqa: F401
