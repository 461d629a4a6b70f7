"""The store's one exception type: its message is one line meant for the user."""
from __future__ import annotations


class StoreError(Exception):
    """A store problem with a one-line message meant for the user."""


def storage_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that mean the storage under a store (S3 and the like) could not be reached,
    refused the credentials or the request: bad settings, reported as one line."""
    errors: list[type[BaseException]] = [PermissionError]
    try:
        from botocore.exceptions import BotoCoreError, ClientError

        errors.extend([BotoCoreError, ClientError])
    except ImportError:  # no S3 support installed
        pass
    return tuple(errors)


def storage_message(err: BaseException) -> str:
    first = str(err).splitlines()[0] if str(err) else ""
    return f"storage: {type(err).__name__}: {first}"
