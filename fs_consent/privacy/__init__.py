"""The statement's rights and duties over stored data: withdrawal of ended calls, retention,
objections, the subject request register, find/erase/restrict/rectify, the access export and
the police export. Imports ``store``, ``secure`` and ``core``."""
