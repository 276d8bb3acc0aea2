"""The listening room's pages (Jinja2, autoescaped) and their texts, Dutch first, then English.

No script at all: the player is the browser's own audio element (``controlsList="nodownload"``),
the Content-Security-Policy allows styles and media from this origin only. The templates
live here, not in files beside the package, so an install has nothing to forget.
"""

from __future__ import annotations

LANGUAGES = ("nl", "en")

TEXTS: dict[str, dict[str, str]] = {
    "nl": {
        "title": "Luisterruimte",
        "signin": "Inloggen",
        "name": "Gebruikersnaam",
        "password": "Wachtwoord",
        "signout": "Uitloggen",
        "bad_signin": "Inloggen is niet gelukt. Controleer naam en wachtwoord; na herhaalde fouten is het "
                      "account een tijd geblokkeerd.",
        "too_many": "Te veel pogingen. Probeer het over een minuut opnieuw.",
        "coach": "coach",
        "privacy_officer": "functionaris gegevensbescherming",
        "teams": "Teams",
        "recordings": "Opnamen",
        "intro_coach": "De opnamen van gesprekken van medewerkers in uw teams waarvoor de beller toestemming gaf. "
                       "Ingetrokken, beperkte en verlopen opnamen staan er niet bij. Elke keer luisteren wordt "
                       "vastgelegd.",
        "intro_po": "Alle opnamen die gebruikt mogen worden (alleen lezen). Elke keer luisteren wordt vastgelegd.",
        "started": "Begonnen (UTC)",
        "duration": "Duur",
        "route": "Route",
        "staff": "Medewerker",
        "days_left": "Dagen over",
        "listen": "Luisteren",
        "none": "Er zijn geen opnamen die u mag beluisteren.",
        "back": "Terug naar de lijst",
        "player": "Opname beluisteren",
        "player_note": "Deze opname wordt alleen afgespeeld, niet gedownload. Wat u beluistert (wie, welke opname, "
                       "wanneer, hoeveel) staat in het auditspoor.",
        "no_audio": "Uw browser speelt geen audio af.",
        "forbidden": "Deze opname hoort niet bij uw teams. De poging is vastgelegd.",
        "not_found": "Deze opname bestaat niet (meer), is ingetrokken of beperkt, of de bewaartermijn is "
                     "verstreken.",
        "bad_request": "Het formulier was verlopen of ongeldig. Probeer het opnieuw.",
        "unavailable": "Deze opname kan nu niet worden afgespeeld. De beheerder is gewaarschuwd via het logboek.",
        "other_language": "English",
        "days": "dagen",
    },
    "en": {
        "title": "Listening room",
        "signin": "Sign in",
        "name": "User name",
        "password": "Password",
        "signout": "Sign out",
        "bad_signin": "Signing in failed. Check the name and password; after repeated failures the account is "
                      "locked for a while.",
        "too_many": "Too many attempts. Try again in a minute.",
        "coach": "coach",
        "privacy_officer": "privacy officer",
        "teams": "Teams",
        "recordings": "Recordings",
        "intro_coach": "The recordings of calls taken by staff in your teams, where the caller consented. Withdrawn, "
                       "restricted and expired recordings are not listed. Every playback is audited.",
        "intro_po": "Every recording that may be used (read-only). Every playback is audited.",
        "started": "Started (UTC)",
        "duration": "Duration",
        "route": "Route",
        "staff": "Staff",
        "days_left": "Days left",
        "listen": "Listen",
        "none": "There are no recordings you may hear.",
        "back": "Back to the list",
        "player": "Listen to a recording",
        "player_note": "This recording is played, not downloaded. What you hear (who, which recording, when, how "
                       "much) is in the audit trail.",
        "no_audio": "Your browser does not play audio.",
        "forbidden": "This recording is not one of your teams'. The attempt was recorded.",
        "not_found": "This recording does not exist (any more), was withdrawn or restricted, or its term is over.",
        "bad_request": "The form had expired or was not valid. Please try again.",
        "unavailable": "This recording cannot be played now. The administrator was told through the log.",
        "other_language": "Nederlands",
        "days": "days",
    },
}

CSS = """\
body { font-family: system-ui, sans-serif; margin: 0; color: #1b1b1b; background: #f6f6f4; }
header { display: flex; justify-content: space-between; align-items: center; padding: .8rem 1.5rem;
         background: #154273; color: #fff; }
header h1 { font-size: 1.2rem; margin: 0; }
header form, header span, header a { display: inline; margin-left: 1rem; color: #fff; }
main { max-width: 60rem; margin: 1.5rem auto; padding: 0 1.5rem; }
table { border-collapse: collapse; width: 100%; background: #fff; }
th, td { text-align: left; padding: .5rem .7rem; border-bottom: 1px solid #ddd; }
th { background: #e8ecf1; }
button, .button { background: #154273; color: #fff; border: 0; padding: .4rem .9rem; border-radius: 3px;
                  text-decoration: none; font-size: .95rem; cursor: pointer; }
header button { background: #fff; color: #154273; }
.note { color: #555; font-size: .9rem; }
.error { background: #fbe9e7; border-left: 4px solid #c62828; padding: .6rem 1rem; }
form.signin { background: #fff; padding: 1.5rem; max-width: 22rem; }
form.signin label { display: block; margin: .6rem 0 .2rem; }
form.signin input { width: 100%; padding: .4rem; box-sizing: border-box; }
form.signin button { margin-top: 1rem; }
audio { width: 100%; margin: 1rem 0; }
dl { display: grid; grid-template-columns: max-content auto; gap: .3rem 1rem; background: #fff; padding: 1rem; }
dt { font-weight: 600; }
"""

BASE = """\
<!doctype html>
<html lang="{{ lang }}">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="referrer" content="no-referrer">
<title>{{ t.title }}</title>
<link rel="stylesheet" href="{{ url_for('style') }}">
</head>
<body>
<header>
  <h1>fs-consent · {{ t.title }}</h1>
  <div>
    <a href="?lang={{ other }}">{{ t.other_language }}</a>
    {% if session %}
      <span>{{ session.name }} ({{ t[session.role] }})</span>
      <form method="post" action="{{ url_for('signout') }}?lang={{ lang }}">
        <input type="hidden" name="csrf_token" value="{{ session.csrf_token }}">
        <button type="submit">{{ t.signout }}</button>
      </form>
    {% endif %}
  </div>
</header>
<main>
{% block main %}{% endblock %}
</main>
</body>
</html>
"""

SIGNIN = """\
{% extends "base.html" %}
{% block main %}
<h2>{{ t.signin }}</h2>
{% if error %}<p class="error" role="alert">{{ error }}</p>{% endif %}
<form class="signin" method="post" action="{{ url_for('signin') }}?lang={{ lang }}">
  <input type="hidden" name="csrf_token" value="{{ csrf_token }}">
  <label for="name">{{ t.name }}</label>
  <input id="name" name="name" autocomplete="username" required maxlength="64" autofocus>
  <label for="password">{{ t.password }}</label>
  <input id="password" name="password" type="password" autocomplete="current-password" required maxlength="1024">
  <button type="submit">{{ t.signin }}</button>
</form>
{% endblock %}
"""

LIST = """\
{% extends "base.html" %}
{% block main %}
<h2>{{ t.recordings }}</h2>
<p class="note">{{ t.intro_po if session.role == "privacy_officer" else t.intro_coach }}</p>
{% if teams %}<p>{{ t.teams }}: {{ teams | join(", ") }}</p>{% endif %}
{% if entries %}
<table id="recordings">
  <thead><tr><th>{{ t.started }}</th><th>{{ t.duration }}</th><th>{{ t.route }}</th><th>{{ t.staff }}</th>
  <th>{{ t.teams }}</th><th>{{ t.days_left }}</th><th></th></tr></thead>
  <tbody>
  {% for e in entries %}
    <tr data-recording="{{ e.id }}">
      <td>{{ e.started_at.strftime("%Y-%m-%d %H:%M") }}</td>
      <td>{{ duration(e.duration_seconds) }}</td>
      <td>{{ e.route or "–" }}</td>
      <td class="staff">{{ e.staff | join(", ") or "–" }}</td>
      <td>{{ e.teams | join(", ") or "–" }}</td>
      <td>{{ e.days_left }}</td>
      <td><a class="button" href="{{ url_for('player', recording_id=e.id) }}?lang={{ lang }}">{{ t.listen }}</a></td>
    </tr>
  {% endfor %}
  </tbody>
</table>
{% else %}
<p id="empty">{{ t.none }}</p>
{% endif %}
{% endblock %}
"""

PLAYER = """\
{% extends "base.html" %}
{% block main %}
<h2>{{ t.player }}</h2>
<dl>
  <dt>{{ t.started }}</dt><dd>{{ entry.started_at.strftime("%Y-%m-%d %H:%M:%S") }}</dd>
  <dt>{{ t.duration }}</dt><dd>{{ duration(entry.duration_seconds) }}</dd>
  <dt>{{ t.route }}</dt><dd>{{ entry.route or "–" }}</dd>
  <dt>{{ t.staff }}</dt><dd class="staff">{{ entry.staff | join(", ") or "–" }}</dd>
  <dt>{{ t.teams }}</dt><dd>{{ entry.teams | join(", ") or "–" }}</dd>
  <dt>{{ t.days_left }}</dt><dd>{{ entry.days_left }} {{ t.days }}</dd>
</dl>
<audio id="player" controls preload="none" controlslist="nodownload noplaybackrate" disableremoteplayback
       src="{{ url_for('audio', recording_id=entry.id) }}">{{ t.no_audio }}</audio>
<p class="note">{{ t.player_note }}</p>
<p><a href="{{ url_for('index') }}?lang={{ lang }}">{{ t.back }}</a></p>
{% endblock %}
"""

MESSAGE = """\
{% extends "base.html" %}
{% block main %}
<p class="error" role="alert">{{ message }}</p>
<p><a href="{{ url_for('index') }}?lang={{ lang }}">{{ t.back }}</a></p>
{% endblock %}
"""

TEMPLATES = {"base.html": BASE, "signin.html": SIGNIN, "list.html": LIST, "player.html": PLAYER,
             "message.html": MESSAGE}


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    total = int(round(seconds))
    return f"{total // 60}:{total % 60:02d}"
