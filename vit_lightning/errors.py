"""The one exception type for mistakes a user can fix; the CLI prints it as a single line."""

import sys
from typing import Callable


class UserError(Exception):
    """Bad input or environment: the message says what is wrong and how to fix it."""


class SettingError(UserError, ValueError):
    """A setting that cannot work (a ``ValueError`` for plain-Python callers, a :class:`UserError` for the CLI)."""


def exit_on_user_error(main: Callable[[], None]) -> None:
    """Run a command; a :class:`UserError` becomes one ``error: ...`` line on stderr and exit status 1."""
    try:
        main()
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(1)
