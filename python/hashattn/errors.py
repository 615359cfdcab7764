"""Exceptions: one class per ``hashattn_status_t``, all under :class:`HashAttnError`.

Each carries the status, its name from ``api->status_string`` and the library's
``last_error`` message, which names the argument and the value
("decode: query.dtype = float64, expected float32").
"""
from __future__ import annotations

from typing import Dict, Type

from ._abi import Status

__all__ = [
    "HashAttnError",
    "InvalidArgumentError",
    "UnsupportedError",
    "OutOfMemoryError",
    "WorkspaceTooSmallError",
    "NotReadyError",
    "HashAttnIOError",
    "FormatError",
    "DeviceError",
    "InternalError",
    "LibraryNotFoundError",
    "error_for_status",
]


class HashAttnError(RuntimeError):
    """A call into libhashattn returned a status other than OK.

    Attributes: ``status`` (:class:`hashattn.Status`), ``status_name`` (the
    library's name for it) and ``message`` (the library's last_error text).
    """

    status: Status = Status.INTERNAL

    def __init__(self, message: str, status: int = -1, status_name: str = "") -> None:
        if status >= 0:
            try:
                self.status = Status(status)
            except ValueError:
                pass
        self.status_name = status_name or getattr(self.status, "name", str(status))
        self.message = message
        super().__init__(f"{self.status_name}: {message}" if message else self.status_name)


class InvalidArgumentError(HashAttnError, ValueError):
    """INVALID_ARGUMENT: a value, shape, stride, dtype or id is wrong."""

    status = Status.INVALID_ARGUMENT


class UnsupportedError(HashAttnError, NotImplementedError):
    """UNSUPPORTED: valid, but not built or not implemented in this library."""

    status = Status.UNSUPPORTED


class OutOfMemoryError(HashAttnError, MemoryError):
    """OUT_OF_MEMORY: a host or device allocation failed."""

    status = Status.OUT_OF_MEMORY


class WorkspaceTooSmallError(HashAttnError):
    """WORKSPACE_TOO_SMALL: the workspace is below what the call needs."""

    status = Status.WORKSPACE_TOO_SMALL


class NotReadyError(HashAttnError):
    """NOT_READY: hash weights are not bound yet."""

    status = Status.NOT_READY


class HashAttnIOError(HashAttnError):
    """IO_ERROR: a file could not be opened or read."""

    status = Status.IO_ERROR


class FormatError(HashAttnError):
    """FORMAT_ERROR: a file is malformed or does not match the context."""

    status = Status.FORMAT_ERROR


class DeviceError(HashAttnError):
    """DEVICE_ERROR: the CUDA runtime or a kernel reported an error."""

    status = Status.DEVICE_ERROR


class InternalError(HashAttnError):
    """INTERNAL: a bug in the library; please report the message."""

    status = Status.INTERNAL


class CommError(HashAttnError):
    """COMM_ERROR (ABI 1.1): NCCL reported an error or timed out, or could not be loaded."""

    status = Status.COMM_ERROR


class LibraryNotFoundError(OSError):
    """libhashattn.so.1 was not found (see :func:`hashattn.library_path`)."""


_BY_STATUS: Dict[int, Type[HashAttnError]] = {
    cls.status: cls
    for cls in (InvalidArgumentError, UnsupportedError, OutOfMemoryError, WorkspaceTooSmallError,
                NotReadyError, HashAttnIOError, FormatError, DeviceError, InternalError, CommError)
}


def error_for_status(status: int, message: str, status_name: str = "") -> HashAttnError:
    """The exception for ``status`` (an unknown status gives a plain HashAttnError)."""
    cls = _BY_STATUS.get(int(status), HashAttnError)
    return cls(message, int(status), status_name)
