"""The consent rules and the plain values everything else shares: the consent machine
(``consent``), the index of where each promise of the statement is kept (``rules``), the
configuration, durations, references, log output. Standard library only; imports no other layer."""
