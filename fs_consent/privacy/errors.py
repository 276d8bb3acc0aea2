"""The errors of the data subject commands (find, export, erase, restrict, object), shared by
the modules that serve them."""


class SubjectError(Exception):
    """Bad input for a subject command (unparseable number, unknown call...); nothing changed."""


class RecordingRestricted(SubjectError):
    """Playing or exporting was refused: the call is restricted (art. 18) and no legal claim was given."""
