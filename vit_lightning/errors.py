"""The one exception type for mistakes a user can fix; the CLI prints it as a single line."""


class UserError(Exception):
    """Bad input or environment: the message says what is wrong and how to fix it."""


class SettingError(UserError, ValueError):
    """A setting that cannot work (a ``ValueError`` for plain-Python callers, a :class:`UserError` for the CLI)."""
