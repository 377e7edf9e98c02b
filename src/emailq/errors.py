"""One error hierarchy for emailq. Each class also inherits the standard base it resembles."""


class EmailqError(Exception):
    """Base of every error emailq raises on purpose."""


class ValidationError(EmailqError, ValueError):
    """Input that emailq will not accept; ``field`` names where the problem is."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class ConfigurationError(EmailqError, ValueError):
    """A setting or URL that emailq cannot use."""


class BrokerError(EmailqError):
    """The broker could not carry out an operation."""


class MissingDependencyError(EmailqError, ImportError):
    """An optional package needed by the chosen backend is not installed."""
