"""The listening room's routes (Flask, a WSGI app; ``serve.py`` runs it on gevent's WSGI server).

``/`` the list, ``/recordings/<id>`` the player page, ``/recordings/<id>/audio`` the audio
(Range, decrypted on the fly), ``/signin`` and ``/signout``. Every response: no-store,
nosniff, a Content-Security-Policy with no script at all, no framing, no referrer. Every
POST carries a CSRF token (the session's; the sign-in form's is a double-submit cookie),
checked before anything else. A refused recording (403 not yours, 404 not playable) is
audited, and so is a refused form. The request log names the route's pattern, the method
and the status: never the path's values, the query string, the account or the address.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

from flask import Flask, Response, g, redirect, render_template, request, url_for
from jinja2 import DictLoader

from ..core.logs import fields
from ..privacy.retention import Terms
from ..secure.age_header import HeaderOpener
from ..secure.protect import FieldProtector
from ..secure.spool import check_recording_id
from ..store import audit_actions, ledger
from . import accounts, catalogue, pages, sessions
from .playback import BadRange, Unplayable, open_playback

log = logging.getLogger("fs_consent.listen")
access_log = logging.getLogger("fs_consent.listen.access")

CSP = ("default-src 'none'; style-src 'self'; media-src 'self'; img-src 'self'; form-action 'self'; "
       "frame-ancestors 'none'; base-uri 'none'")
SECURITY_HEADERS = {
    "Cache-Control": "no-store",
    "Pragma": "no-cache",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": CSP,
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=()",
}
SIGNIN_TOKEN_AGE = 3600


@dataclass(frozen=True)
class Room:
    """What the routes need: the settings, the retention terms, the store, the identity and the field key."""

    listen: object  # core.config.ListenConfig
    terms: Terms
    store_dir: Path
    opener: HeaderOpener
    protector: FieldProtector  # opens the staff identifiers shown beside a recording

    def path_for(self, recording_id: str) -> Path:
        return self.store_dir / f"{check_recording_id(recording_id)}.age"


def create_app(room: Room) -> Flask:
    app = Flask("fs_consent.listen")
    app.jinja_loader = DictLoader(pages.TEMPLATES)
    app.jinja_env.autoescape = True
    app.jinja_env.globals["duration"] = pages.duration
    app.config.update(MAX_CONTENT_LENGTH=16 * 1024, SESSION_COOKIE_HTTPONLY=True, TRAP_HTTP_EXCEPTIONS=False)
    limiter = accounts.RateLimit(room.listen.signin_per_minute)
    policy = accounts.Policy.from_config(room.listen)

    def log_exception(exc_info):  # Flask's own names the URL: ours names the route only
        rule = request.url_rule.rule if request.url_rule else "(no route)"
        log.error("request failed", extra=fields(route=rule, error=type(exc_info[1]).__name__))

    app.log_exception = log_exception

    # --- who is asking -----------------------------------------------------------------

    def trusted_peer() -> bool:
        try:
            peer = ipaddress.ip_address(request.environ.get("REMOTE_ADDR", ""))
        except ValueError:
            return False
        return any(peer in net for net in room.listen.trusted_proxies)

    def client_address() -> str | None:
        if g.trusted:
            forwarded = [a.strip() for a in request.headers.get("X-Forwarded-For", "").split(",") if a.strip()]
            if forwarded:
                return forwarded[-1]  # the one our proxy appended
        return request.environ.get("REMOTE_ADDR")

    def over_tls() -> bool:
        if request.environ.get("wsgi.url_scheme") == "https":
            return True
        return g.trusted and request.headers.get("X-Forwarded-Proto", "").strip().lower() == "https"

    def language() -> str:
        asked = request.args.get("lang")
        if asked in pages.LANGUAGES:
            return asked
        return request.accept_languages.best_match(pages.LANGUAGES) or room.listen.language

    def render(template: str, status: int = 200, **values) -> Response:
        lang = g.lang
        other = "en" if lang == "nl" else "nl"
        html = render_template(template, lang=lang, other=other, t=pages.TEXTS[lang], session=g.session, **values)
        return Response(html, status, content_type="text/html; charset=utf-8")

    def message(key: str, status: int) -> Response:
        return render("message.html", status, message=pages.TEXTS[g.lang][key])

    def refuse(recording_id: str, status: int, reason: str, what: str) -> Response:
        actor = g.session.name if g.session else "listen"
        ledger.append_audit(actor, audit_actions.LISTEN_REFUSED, "recording", recording_id[:64], status=status,
                            reason=reason, what=what, address=g.address)
        return message("forbidden" if status == 403 else "not_found", status)

    def proxy_sign_in() -> None:
        """The trusted proxy's user header: an existing, enabled account gets a session."""
        name = request.headers.get(room.listen.user_header, "").strip()
        if not name or (g.session and g.session.name == name):
            return
        if g.session:  # another user behind the same browser: the old session ends
            sessions.end(g.session)
            g.session = None
        account = ledger.ListenAccount.get_or_none(ledger.ListenAccount.name == name) \
            if accounts.NAME.fullmatch(name) else None
        if account is None or account.disabled_at is not None:
            object_id = name if account is not None else "(unknown)"
            ledger.append_audit(object_id if account else "listen", audit_actions.LISTEN_SIGNIN_REFUSED,
                                "listen_account", object_id, method="proxy",
                                reason="disabled" if account else "unknown", address=g.address)
            return
        token, g.session = sessions.start(account, lifetime=room.listen.session_lifetime)
        g.new_token = token
        ledger.append_audit(name, audit_actions.LISTEN_SIGNIN, "listen_account", name, method="proxy",
                            address=g.address)

    @app.before_request
    def before():
        g.started = time.monotonic()
        g.trusted = trusted_peer()
        g.address = client_address()
        g.secure = over_tls()
        g.lang = language()
        g.new_token = None
        g.clear_cookie = False
        g.signin_token = None
        g.session = sessions.find(request.cookies.get(sessions.COOKIE), idle_timeout=room.listen.idle_timeout)
        if room.listen.user_header and g.trusted:
            proxy_sign_in()
        if request.method == "POST":
            submitted = request.form.get("csrf_token", "")
            if request.endpoint == "signin":
                cookie = request.cookies.get(sessions.SIGNIN_COOKIE, "")
                ok = bool(cookie) and hmac.compare_digest(cookie.encode(), submitted.encode())
            else:
                ok = g.session is not None and g.session.csrf_ok(submitted)
            if not ok:
                actor = g.session.name if g.session else "listen"
                ledger.append_audit(actor, audit_actions.LISTEN_REFUSED, "form", request.endpoint or "(none)",
                                    status=400, reason="csrf", address=g.address)
                return message("bad_request", 400)
        return None

    @app.after_request
    def after(response: Response) -> Response:
        for name, value in SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)
        if g.get("new_token"):
            response.set_cookie(sessions.COOKIE, g.new_token, max_age=int(room.listen.session_lifetime), path="/",
                                httponly=True, secure=g.secure, samesite="Strict")
        elif g.get("clear_cookie"):
            response.delete_cookie(sessions.COOKIE, path="/", httponly=True, secure=g.secure, samesite="Strict")
        if g.get("signin_token"):
            response.set_cookie(sessions.SIGNIN_COOKIE, g.signin_token, max_age=SIGNIN_TOKEN_AGE, path="/signin",
                                httponly=True, secure=g.secure, samesite="Strict")
        rule = request.url_rule.rule if request.url_rule else "(no route)"
        access_log.info("request", extra=fields(method=request.method, route=rule, status=response.status_code,
                                                ms=round((time.monotonic() - g.get("started", time.monotonic()))
                                                         * 1000, 1)))
        return response

    @app.errorhandler(404)
    def not_found(_exc):
        return message("not_found", 404)

    @app.errorhandler(405)
    def not_allowed(_exc):
        return message("bad_request", 405)

    @app.errorhandler(413)
    def too_large(_exc):
        return message("bad_request", 413)

    # --- pages -------------------------------------------------------------------------

    @app.get("/style.css")
    def style():
        return Response(pages.CSS, content_type="text/css; charset=utf-8")

    @app.get("/")
    def index():
        if g.session is None:
            return redirect(url_for("signin", lang=g.lang), 303)
        entries = catalogue.listing(g.session.account, room.terms, room.protector)
        teams = accounts.teams_of(g.session.account) if g.session.role == accounts.COACH else []
        return render("list.html", entries=entries, teams=teams)

    def signin_form(status: int = 200, error: str | None = None) -> Response:
        g.signin_token = request.cookies.get(sessions.SIGNIN_COOKIE) or secrets.token_urlsafe(32)
        return render("signin.html", status, csrf_token=g.signin_token, error=error)

    @app.route("/signin", methods=["GET", "POST"])
    def signin():
        if request.method == "GET":
            if g.session is not None:
                return redirect(url_for("index", lang=g.lang), 303)
            return signin_form()
        texts = pages.TEXTS[g.lang]
        name = request.form.get("name", "").strip()
        if not limiter.allow(g.address or "?"):
            ledger.append_audit("listen", audit_actions.LISTEN_SIGNIN_REFUSED, "listen_account", "(rate limit)",
                                reason="rate-limit", address=g.address)
            return signin_form(429, texts["too_many"])
        result = accounts.authenticate(name, request.form.get("password", ""), policy, address=g.address)
        if result.account is None:
            return signin_form(401, texts["bad_signin"])
        if g.session:
            sessions.end(g.session)
        token, g.session = sessions.start(result.account, lifetime=room.listen.session_lifetime)
        g.new_token = token
        response = redirect(url_for("index", lang=g.lang), 303)
        response.delete_cookie(sessions.SIGNIN_COOKIE, path="/signin")
        return response

    @app.post("/signout")
    def signout():
        if g.session is not None:
            ledger.append_audit(g.session.name, audit_actions.LISTEN_SIGNOUT, "listen_account", g.session.name)
            sessions.end(g.session)
        g.session, g.clear_cookie = None, True
        return redirect(url_for("signin", lang=g.lang), 303)

    @app.get("/recordings/<recording_id>")
    def player(recording_id):
        if g.session is None:
            return redirect(url_for("signin", lang=g.lang), 303)
        entry, refused = catalogue.lookup(g.session.account, recording_id, room.terms, room.protector)
        if refused:
            return refuse(recording_id, 403 if refused == catalogue.NOT_YOURS else 404, refused, "page")
        return render("player.html", entry=entry)

    @app.get("/recordings/<recording_id>/audio")
    def audio(recording_id):
        if g.session is None:
            ledger.append_audit("listen", audit_actions.LISTEN_REFUSED, "recording", recording_id[:64],
                                status=401, reason="not-signed-in", what="audio", address=g.address)
            return Response("", 401)
        entry, refused = catalogue.lookup(g.session.account, recording_id, room.terms, room.protector)
        if refused:
            return refuse(recording_id, 403 if refused == catalogue.NOT_YOURS else 404, refused, "audio")
        rec = ledger.Recording.get_by_id(entry.id)
        try:
            play = open_playback(g.session.name, entry.id, rec.sha256, room.path_for(entry.id), room.opener,
                                 request.headers.get("Range"), address=g.address)
        except BadRange as exc:
            return Response("", 416, headers={"Content-Range": f"bytes */{exc.size}"})
        except Unplayable as exc:
            log.error("a recording cannot be played", extra=fields(recording=entry.id, why=str(exc)))
            return refuse(entry.id, 404, "unplayable", "audio")
        play.audit_start()
        headers = {
            "Content-Type": "audio/wav",
            "Content-Length": str(play.length),
            "Accept-Ranges": "bytes",
            "Content-Disposition": "inline",
        }
        if play.partial:
            headers["Content-Range"] = f"bytes {play.start}-{play.end}/{play.reader.size}"
        response = Response(play.body(), 206 if play.partial else 200, headers=headers)
        response.call_on_close(play.close)
        return response

    return app
