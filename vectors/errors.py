"""The one error type every library stage raises for input a user can fix.

Jobs print such an error as one line and exit with status 2; anything else is a bug and
keeps its traceback. Each stage subclasses it so callers can tell stages apart.
"""
from __future__ import annotations


class InputError(ValueError):
    """Bad input, or a file, bundle or run directory that cannot be used as it is.

    The message names the problem and what to do about it, in the user's terms.
    """
