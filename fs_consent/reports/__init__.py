"""What the privacy officer and the sysadmin read: ``report``, ``compliance`` (the statement's
promises checked), ``check`` (readiness), and the retention queries both of the first share
(``overdue``). Imports the layers below it; writes nothing."""
