"""Exceptions raised by splitlink.

``SplitlinkError`` is the base of the errors that come from the native core:

* ``WireError``: a frame is malformed (truncated, inconsistent, unsupported version).
* ``CodecError``: a codec cannot encode or decode a tensor.
* ``CryptoError``: authentication or decryption failed.

Invalid arguments raise ``ValueError`` (or ``TypeError`` for a wrong type).
"""

from splitlink._core import CodecError, CryptoError, SplitlinkError, WireError

__all__ = ["SplitlinkError", "WireError", "CodecError", "CryptoError"]
