"""`InputError`: bad input that the library finds only while it works.

Flags are checked before a run starts, but some input can only be judged later: a MACs budget
no path reaches, a board with no path in the budget, a workdir holding another search, a
damaged checkpoint. The library raises `InputError` for these, and run.py prints it as one
line (exit code 2), like a bad flag. Any other exception is a bug and keeps its traceback. It
is a `ValueError`, so code that catches `ValueError` keeps working.
"""

__all__ = ["InputError"]


class InputError(ValueError):
    """Bad input found while working; the message says what is wrong and what would do."""
