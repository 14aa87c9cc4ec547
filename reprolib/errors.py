"""One exception type for every user-facing mistake.

The command line prints a ``ReproError``'s message (which names the problem and
the fix) and exits with status 2, without a traceback.
"""


class ReproError(ValueError):
    """Bad input or a missing resource, with a message that says how to fix it."""
