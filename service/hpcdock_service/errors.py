"""The one exception type for input the service refuses."""


class BadInput(Exception):
    """Input that hpcdock refuses; ``field`` names where the problem is, ``message`` why.

    The API turns it into a 4xx ``{"error": {"field", "message"}}`` and the CLI into a
    non-zero exit; nothing is created when it is raised.
    """

    def __init__(self, field: str, message: str, status: int = 400) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message
        self.status = status


class NotFound(BadInput):
    def __init__(self, field: str, message: str) -> None:
        super().__init__(field, message, status=404)
