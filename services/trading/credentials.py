"""Alpaca API keys from the environment (APCA_API_KEY_ID, APCA_API_SECRET_KEY) or a TOML file of
mode 0600 (``key_id = "..."``, ``secret_key = "..."``). A key is never shown: ``Keys`` prints as
``***`` in a log, an error, a status answer or a metric."""
from __future__ import annotations

import os
import stat
import tomllib
from dataclasses import dataclass, field

MASK = "***"
ENV_KEY_ID, ENV_SECRET = "APCA_API_KEY_ID", "APCA_API_SECRET_KEY"


class CredentialsError(Exception):
    """No usable keys: one line naming where they were looked for, never their value."""


@dataclass(frozen=True)
class Keys:
    key_id: str = field(repr=False)
    secret_key: str = field(repr=False)
    source: str = ""

    def __repr__(self) -> str:
        return f"Keys(key_id={MASK}, secret_key={MASK}, source={self.source!r})"

    __str__ = __repr__

    def headers(self) -> dict[str, str]:
        return {"APCA-API-KEY-ID": self.key_id, "APCA-API-SECRET-KEY": self.secret_key}

    def redact(self, text: str) -> str:
        """``text`` with any key in it replaced by ***."""
        for secret in (self.key_id, self.secret_key):
            if secret:
                text = text.replace(secret, MASK)
        return text


def load_keys(keys_file: str | None = None, environ: dict[str, str] | None = None) -> Keys:
    env = os.environ if environ is None else environ
    if keys_file is None:
        key_id, secret = env.get(ENV_KEY_ID), env.get(ENV_SECRET)
        if not key_id or not secret:
            raise CredentialsError(f"no Alpaca keys: set {ENV_KEY_ID} and {ENV_SECRET}, or give --keys-file "
                                   "(a 0600 TOML file with key_id and secret_key)")
        return Keys(key_id, secret, "environment")
    try:
        st = os.stat(keys_file)
    except OSError as exc:
        raise CredentialsError(f"keys file {keys_file}: {exc.strerror}") from None
    if st.st_uid != os.getuid() or st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise CredentialsError(f"keys file {keys_file} must belong to this user and be mode 0600 "
                               f"(it is {stat.S_IMODE(st.st_mode):04o}): chmod 600 {keys_file}")
    try:
        with open(keys_file, "rb") as f:
            table = tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        # the decoder's message can quote the file's text: say where, not what
        raise CredentialsError(f"keys file {keys_file} is not readable TOML ({type(exc).__name__})") from None
    key_id, secret = table.get("key_id"), table.get("secret_key")
    if not isinstance(key_id, str) or not key_id or not isinstance(secret, str) or not secret:
        raise CredentialsError(f"keys file {keys_file} needs string key_id and secret_key")
    return Keys(key_id, secret, keys_file)
