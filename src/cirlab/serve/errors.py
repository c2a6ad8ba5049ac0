"""The server's errors: each with the HTTP status it maps to, and what it is about as data (which turn of a
session, which gallery image), sent beside the message."""

from __future__ import annotations

from cirlab.errors import CirlabError, quoted


class ServiceError(CirlabError):
    """An error with the HTTP status it maps to; ``about`` (``turn``, ``image_id``...) goes into the JSON reply next
    to ``error``."""

    def __init__(self, status: int, message: str, **about) -> None:
        super().__init__(message)
        self.status = status
        self.about = about


def unreadable_gallery_image(image_id: str) -> str:
    """The reply for a gallery file that went bad on disk: the id, never the server's path."""
    return (f"the file of gallery image {quoted(image_id)} is unreadable on the server; "
            "pick another reference, or remove the image from the gallery")
