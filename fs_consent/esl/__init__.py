"""The FreeSWITCH Event Socket, sans-IO: the wire format (``codec``) and the
outbound session that matches replies and completions (``session``).

``from fs_consent import esl`` gives the codec's names, as before the split.
"""

from .codec import *  # noqa: F403 - the codec's public names are the package's
from .codec import __all__ as _codec_names

__all__ = list(_codec_names)
