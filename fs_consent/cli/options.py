"""Options and helpers shared by the command groups: the subject's number, the request an
action answers, and the legal claim that alone opens a restricted call's recordings (art. 18)."""

from __future__ import annotations

import sys

import click

PHONE_HELP = ("The caller's number, in any written form (06 12345678, +31 6 1234 5678, 0031 6..., 040-1234567); "
              "'-' reads it from stdin, which keeps it out of shell history and ps.")
phone_option = click.option("--phone", "number", metavar="NUMBER", required=True, help=PHONE_HELP)
request_option = click.option("--request", "ref", metavar="REF", required=True,
                              help="The request in the register (fs-consent requests) this action answers.")



def stdin_if_dash(value: str) -> str:
    return sys.stdin.read() if value == "-" else value


_CLAIM_MAX = 200


def _check_legal_claim(_ctx, _param, value: str | None) -> str | None:
    if value is None:
        return None
    text = value.strip()
    if not text:
        raise click.BadParameter("must say which legal claim this is for")
    if len(text) > _CLAIM_MAX or any(ord(ch) < 32 for ch in text):
        raise click.BadParameter(f"must be one line of at most {_CLAIM_MAX} characters")
    return text


legal_claim_option = click.option(
    "--legal-claim", metavar="REASON", callback=_check_legal_claim,
    help="Open a restricted call's recording (art. 18) anyway, for the establishment, exercise or defence "
         "of a legal claim; REASON names it (a case or file number: no personal data). Audited.")

