"""The ledger: every table (``ledger``), opening a database (``connection``), the schema steps,
the audit trail, the consent facts and the writer that lands them off the hub, and the
repositories that alone write a recording's state (``recordings``) and a hold (``holds``).
Imports ``secure`` and ``core``."""
