"""`InputError`: bad input that the library finds only while it works.

Flags are checked before a run starts, but some input can only be judged later: a MACs budget
no path reaches, a board with no path in the budget, a workdir holding another search, a
damaged checkpoint. The library raises `InputError` for these, and run.py prints it as one
line (exit code 2), like a bad flag. Any other exception is a bug and keeps its traceback. It
is a `ValueError`, so code that catches `ValueError` keeps working.
"""

__all__ = ["ConfigError", "InputError", "is_count", "require"]


class InputError(ValueError):
    """Bad input found while working; the message says what is wrong and what would do."""


class ConfigError(InputError):
    """A config field outside its bounds.

    The config that owns a bound raises this, naming its own fields ("SearchConfig.lr must be
    > 0"). A caller that built the config from something else, e.g. run.py from its flags,
    calls `describe` with its own names ("--lr must be > 0"), so each bound is written once.

    Attributes:
      owner: the config's class name.
      field: the field that is out of bounds.
      value: its value.
      requirement: what would be valid, as a function of a naming function (field -> name),
        because some bounds refer to other fields ("in [0, epochs=120]").
    """

    def __init__(self, owner: str, field: str, value, requirement):
        self.owner, self.field, self.value = owner, field, value
        self.requirement = requirement if callable(requirement) else (lambda name: requirement)
        super().__init__(self.describe(lambda f: f"{owner}.{f}"))

    def describe(self, name, value=None) -> str:
        """The message with fields called `name(field)`; `value` replaces the shown value."""
        shown = self.value if value is None else value
        return f"{name(self.field)} must be {self.requirement(name)}, got {shown!r}"


def require(owner: str, field: str, value, ok: bool, requirement):
    """Raises `ConfigError(owner, field, value, requirement)` unless `ok`."""
    if not ok:
        raise ConfigError(owner, field, value, requirement)


def is_count(value) -> bool:
    """An int >= 1 (numpy ints too; bools are not counts)."""
    import numbers

    return (isinstance(value, numbers.Integral) and not isinstance(value, bool)
            and value >= 1)
