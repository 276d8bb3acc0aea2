"""The form of a reference a person types (a case, a subject request): it names files and
directories of an export, so nothing path-like passes."""

from __future__ import annotations

import re

REFERENCE = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,63}")
REFERENCE_RULE = "use 1 to 64 letters, digits, '.', '_' or '-', not starting with '.'"


def is_reference(value: object) -> bool:
    return isinstance(value, str) and REFERENCE.fullmatch(value) is not None
