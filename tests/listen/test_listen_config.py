"""[listen] in the config: defaults, validation with clear errors."""

from __future__ import annotations

import pytest

from fs_consent.core.config import ConfigError, load_config


def load(tmp_path, text: str):
    path = tmp_path / "config.toml"
    path.write_text(text)
    return load_config(path, env={"HOME": str(tmp_path)})


def test_defaults(tmp_path):
    listen = load(tmp_path, "").listen
    assert str(listen.address) == "127.0.0.1:8480"
    assert listen.trusted_proxies == () and listen.user_header is None
    assert (listen.lockout_after, listen.lockout_for, listen.language) == (10, 900.0, "nl")


def test_a_proxy_setup(tmp_path):
    listen = load(tmp_path, '[listen]\ntrusted_proxies = ["10.1.2.3", "::1"]\nuser_header = "X-Remote-User"\n'
                            'session_lifetime = "4h"\n').listen
    assert [str(n) for n in listen.trusted_proxies] == ["10.1.2.3/32", "::1/128"]
    assert listen.user_header == "X-Remote-User" and listen.session_lifetime == 4 * 3600


@pytest.mark.parametrize("text, message", [
    ('user_header = "X-Remote-User"', "needs listen.trusted_proxies"),
    ('user_header = "Cookie"', "not a header a proxy sets"),
    ('user_header = "X Remote"', "HTTP header name"),
    ('trusted_proxies = ["10.0.0.1/8"]', "host bits set"),
    ('address = "0.0.0.0"', "HOST:PORT"),
    ("lockout_after = 1", "from 3 to 100"),
    ('language = "de"', "one of nl, en"),
])
def test_bad_values_name_the_key(tmp_path, text, message):
    with pytest.raises(ConfigError, match=message) as err:
        load(tmp_path, f"[listen]\n{text}\n")
    assert "listen." in str(err.value)
