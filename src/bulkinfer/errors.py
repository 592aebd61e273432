"""The one exception root of bulkinfer.

A failed *record* is never an exception: it becomes an error line. These exceptions are for what stops a
whole job or a whole call::

    BulkinferError
    ├── UserError            the caller asked for something that cannot run
    │   ├── InputError       input location missing, unreadable, or holding no .jsonl file
    │   ├── UnknownModelError
    │   ├── ConfigError      a model catalog or setting that does not validate
    │   └── JobConflictError a job id reused with a different model or input
    │       └── JobLocked    the job's files are held by another run
    ├── RecordInvalid        one record's body does not fit its dialect (becomes an error line)
    ├── ProviderError        a model could not be loaded or called
    └── JobFault             no record's fault, and no retry of a record passes it: the job ends
"""

from __future__ import annotations


class BulkinferError(Exception):
    """Something went wrong in bulkinfer."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or self.__doc__ or type(self).__name__)


class UserError(BulkinferError):
    """The request cannot run as given."""


class InputError(UserError):
    """The input location is missing, unreadable, or holds no .jsonl file."""


class UnknownModelError(UserError):
    """No model of that name is in the catalog."""


class ConfigError(UserError):
    """A model catalog or setting is invalid."""


class JobConflictError(UserError):
    """A job with this id already exists with a different model or input."""


class JobLocked(JobConflictError):
    """The job's files are held by another run (one still running or winding down)."""


class RecordInvalid(BulkinferError):
    """One record does not fit the shape its dialect expects.

    Raised inside the pure translation code and turned into an error line at the record boundary.
    """

    def __init__(self, message: str, *, field: str | None = None) -> None:
        self.field = field
        super().__init__(f"{field}: {message}" if field else message)

    def __reduce__(self) -> tuple[object, ...]:
        return (_rebuild_record_invalid, (str(self), self.field))


def _rebuild_record_invalid(message: str, field: str | None) -> RecordInvalid:
    err = RecordInvalid.__new__(RecordInvalid)
    Exception.__init__(err, message)
    err.field = field
    return err


class ProviderError(BulkinferError):
    """A model could not be loaded or called."""


class JobFault(BulkinferError):
    """A failure no record caused and retrying a record cannot pass (a shared rate limit that the state
    store refuses to give, say): the job ends with it, its committed records kept, rather than turn
    every record after it into an error line."""
