"""One error hierarchy for emailq. Each class also inherits the standard base it resembles."""

from collections.abc import Sequence
from dataclasses import dataclass


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
    """The broker could not carry out an operation. Raw backend errors (redis-py's,
    sqlite3's) never leave a broker: callers see this hierarchy whatever the backend."""


class BrokerUnavailable(BrokerError, ConnectionError):
    """The broker cannot be reached or cannot take the operation now; try again later
    (the API answers 503 with Retry-After)."""


class BrokerFull(BrokerUnavailable):
    """The broker refuses writes that need room: Redis at ``maxmemory``, a full disk."""


class MissingDependencyError(EmailqError, ImportError):
    """An optional package needed by the chosen backend is not installed."""


@dataclass(frozen=True, slots=True)
class FieldError:
    """One problem with an input and where it is: a dotted path such as ``to.2.email``."""

    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.field or '(message)'}: {self.message}"


class InvalidEmail(ValidationError):
    """An email that failed validation; ``errors`` lists every problem, each naming its field.

    A ``ValidationError`` (so an ``EmailqError`` and a ``ValueError``) whose ``field`` and
    ``message`` describe the first problem, so code that handles one field still works.
    """

    def __init__(self, errors: Sequence[FieldError]) -> None:
        self.errors = list(errors) or [FieldError("", "invalid email")]
        first = self.errors[0]
        super().__init__(first.field, first.message)
        self.args = ("invalid email: " + "; ".join(map(str, self.errors)),)

    def __str__(self) -> str:
        return str(self.args[0])

    def __reduce__(self) -> tuple[type["InvalidEmail"], tuple[list[FieldError]]]:
        return type(self), (self.errors,)  # so it survives pickling to another process
