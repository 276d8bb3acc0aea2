"""fs-consent: consent-aware call recording for FreeSWITCH."""

__version__ = "0.1.0"
