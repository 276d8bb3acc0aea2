"""Option types and options shared by the CLI modules: dates, times, durations, --format."""

from __future__ import annotations

import datetime as dt

import click

from ..core.durations import parse_duration
from .output import FORMATS

format_option = click.option("--format", "fmt", type=click.Choice(FORMATS), default="table", show_default=True,
                             help="Output format.")


class DateTimeParam(click.ParamType):
    """ISO 8601 date or date and time -> naive UTC; UTC unless it carries an offset."""

    name = "DATETIME"

    def convert(self, value, param, ctx):
        if isinstance(value, dt.datetime):
            parsed = value
        else:
            try:
                parsed = dt.datetime.fromisoformat(str(value).strip())
            except ValueError:
                self.fail(f"{value!r} is not a date/time like 2027-01-31 or 2027-01-31T02:00:00+01:00", param, ctx)
        if parsed.tzinfo is not None:
            parsed = parsed.astimezone(dt.timezone.utc).replace(tzinfo=None)
        return parsed


class DateParam(click.ParamType):
    """A calendar date, ISO 8601 (YYYY-MM-DD)."""

    name = "DATE"

    def convert(self, value, param, ctx):
        if isinstance(value, dt.date):
            return value
        try:
            return dt.date.fromisoformat(str(value).strip())
        except ValueError:
            self.fail(f"{value!r} is not a date like 2027-01-31 (YYYY-MM-DD)", param, ctx)


class Duration(click.ParamType):
    """``90s``, ``15m``, ``36h``, ``60d``, ``12w``, ``1y`` -> seconds (durations.py)."""

    name = "DURATION"

    def convert(self, value, param, ctx):
        if isinstance(value, float):
            return value
        try:
            return parse_duration(value)
        except ValueError as exc:
            self.fail(str(exc), param, ctx)
