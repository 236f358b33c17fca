"""What can go wrong with model weights; each message says what to do."""

from __future__ import annotations


class WeightsError(RuntimeError):
    """A checkpoint could not be found, downloaded or verified; the message says what to do."""


class DownloadError(WeightsError):
    """The download failed (no connection, HTTP error, broken transfer, no space).

    ``retry`` tells whether trying again may help (a broken transfer, a server error).
    """

    def __init__(self, message: str, *, retry: bool = False) -> None:
        super().__init__(message)
        self.retry = retry


class ChecksumError(WeightsError):
    """A file's size or SHA-256 differs from the registry's."""


class CheckpointError(ValueError):
    """A checkpoint file cannot be used: unreadable, unsafe, or for another model."""
