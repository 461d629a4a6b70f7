"""The one base class of this package's input errors (a checkpoint or SAE file that does not
fit, a latent index out of range): builders report them as one line and exit 2."""
from __future__ import annotations


class DictionaryError(ValueError):
    """Bad dictionary input; the message is one line naming the file or value."""
