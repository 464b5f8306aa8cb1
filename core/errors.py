"""The one exception type that carries a message meant for the user (CLI line, app banner)."""


class UserError(ValueError):
    """Bad input: the message says what was wrong and what would be right."""
