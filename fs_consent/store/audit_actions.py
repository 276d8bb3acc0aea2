"""Every action name the audit trail may hold (``AuditEntry.action``).

Write entries with these constants, never a bare string: a reader that filters on an
action (compliance, verification, the report) then cannot drift from the writers.
Stdlib only, so any module may import it.
"""

# consent, in and after the call
CONSENT_DECISION = "consent.decision"
CONSENT_WITHDRAWAL = "consent.withdrawal"  # during the call (the driver)
CONSENT_WITHDRAW = "consent.withdraw"  # an ended call (command, control socket, callback rule)
CONSENT_WITHDRAW_REFUSED = "consent.withdraw.refused"
CONSENT_WITHDRAW_REQUEST = "consent.withdraw.request"

# recordings
RECORDING_SEAL = "recording.seal"
RECORDING_DELETE = "recording.delete"
RECORDING_DELETE_REFUSED = "recording.delete.refused"  # under legal hold: kept
RECORDING_EXPORT = "recording.export"
RECORDING_PLAY = "recording.play"

# the listening room (fs_consent/listen): every playback, every refusal, every sign-in and account change
LISTEN_PLAY = "listen.play"  # a response with audio begins: who, which recording, the range asked for
LISTEN_PLAY_END = "listen.play.end"  # ... and ends: bytes and seconds of audio served, whether all of it
LISTEN_REFUSED = "listen.refused"  # a recording or page refused: 403 (not this account's) or 404 (not playable)
LISTEN_SIGNIN = "listen.signin"
LISTEN_SIGNIN_REFUSED = "listen.signin.refused"  # bad password, unknown or disabled account, locked, rate limit
LISTEN_SIGNOUT = "listen.signout"
LISTEN_ACCOUNT_ADD = "listen.account.add"
LISTEN_ACCOUNT_DISABLE = "listen.account.disable"
LISTEN_ACCOUNT_PASSWORD = "listen.account.password"
LISTEN_ACCOUNT_TEAMS = "listen.account.teams"

# flags and legal holds
CALL_FLAG = "call.flag"
HOLD_ADD = "hold.add"
HOLD_RELEASE = "hold.release"

# retention
PURGE_START = "purge.start"
PURGE_FINISH = "purge.finish"

# data subject rights and their register
REQUEST_ADD = "request.add"
REQUEST_EXTEND = "request.extend"
REQUEST_DECIDE = "request.decide"
SUBJECT_FIND = "subject.find"
SUBJECT_EXPORT = "subject.export"
SUBJECT_ERASE = "subject.erase"
SUBJECT_RESTRICT = "subject.restrict"
SUBJECT_UNRESTRICT = "subject.unrestrict"
SUBJECT_RECTIFY = "subject.rectify"
SUBJECT_OBJECT = "subject.object"
SUBJECT_WITHDRAW_OBJECTION = "subject.withdraw_objection"

# staff on the call: teams, and the identifiers shown (staff list --show-ids)
STAFF_ADD = "staff.add"
STAFF_REMOVE = "staff.remove"
STAFF_SHOW_IDS = "staff.show_ids"

# the trail itself, the installation, reports
AUDIT_CHECKPOINT = "audit.checkpoint"
AUDIT_EXPORT = "audit.export"
SERVER_START = "server.start"  # the first entry of each run of the server
CONFIG_INITIAL = "config.initial"
CONFIG_CHANGE = "config.change"
KEYS_CHANGE = "keys.change"
LEDGER_MIGRATE = "ledger.migrate"
REPORT_GENERATE = "report.generate"

ACTIONS = frozenset(value for name, value in globals().items() if name.isupper() and isinstance(value, str))
