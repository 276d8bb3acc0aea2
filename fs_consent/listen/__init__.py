"""The listening room (``fs-consent listen``): coaches and the privacy officer hear sealed
recordings in the browser, decrypted on the fly into the response, every playback audited.

``accounts`` (scrypt hashes, lock-out, the sign-in rate limit), ``sessions`` (the cookie's
token, its server-side row, CSRF), ``catalogue`` (which recordings an account may hear),
``playback`` (a byte range of a recording's plaintext, audited), ``pages`` (templates and
the Dutch and English texts), ``app`` (the Flask routes), ``serve`` (gevent's WSGI server).
"""
