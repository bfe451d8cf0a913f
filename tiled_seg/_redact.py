"""Redact secrets from a configuration before it is recorded in an output.

Outputs (store attributes, ``uns['config']``, Parquet metadata) are shared
with whoever gets the data, so a recorded configuration must not carry the
credentials a cluster was given: environment values, keys, tokens, passwords.
"""

from __future__ import annotations

import re
from typing import Any

__all__ = ["REDACTED", "redact_secrets"]

#: What a redacted value is replaced with.
REDACTED = "<redacted>"

#: Keys whose values are environments (every value may be a credential).
_ENVIRONMENT_KEYS = re.compile(r"^(env|environment|env_vars|job_env)$", re.IGNORECASE)

#: Keys naming a secret.
_SECRET_KEYS = re.compile(
    r"secret|token|passw|credential|private|api_?key|access_?key|(^|[_-])key$|auth|session",
    re.IGNORECASE,
)

#: Values that look like secrets whatever their key.
_SECRET_VALUES = re.compile(
    r"(AKIA|ASIA)[0-9A-Z]{16}"  # AWS access key id
    r"|gh[pousr]_[A-Za-z0-9]{20,}|github_pat_\w{20,}"  # GitHub tokens
    r"|xox[abprs]-[\w-]{10,}"  # Slack tokens
    r"|eyJ[\w-]{8,}\.eyJ[\w-]{8,}\.[\w-]+"  # JSON web tokens
    r"|-----BEGIN [A-Z ]*PRIVATE KEY-----"
    r"|^(?=[A-Za-z0-9+=_-]*\d)(?=[A-Za-z0-9+=_-]*[A-Za-z])[A-Za-z0-9+=_-]{32,}$"  # long random
)

#: The password of a URL's user information (``scheme://user:password@host``).
_URL_PASSWORD = re.compile(r"(\w+://[^/\s:@]+):[^/\s@]+@")


def _redact_value(value: str) -> str:
    if _SECRET_VALUES.search(value):
        return REDACTED
    return _URL_PASSWORD.sub(rf"\1:{REDACTED}@", value)


def redact_secrets(record: Any, *, key: str = "") -> Any:
    """A copy of ``record`` (nested dicts, lists, scalars) with its secrets replaced.

    Every value under an environment key (``env``) is replaced, so are the
    values of keys that name a secret (``*_key``, ``token``, ``password``,
    ...) and strings that look like one (AWS key ids, GitHub and Slack
    tokens, JSON web tokens, private keys, long random strings); a URL keeps
    its user name but loses its password. Keys and structure are kept, so
    the record still shows what was configured.

    Parameters
    ----------
    record : dict, list or scalar
        A JSON-like configuration.
    key : str
        The key ``record`` was found under (for recursion).

    Returns
    -------
    Any
        The redacted copy; ``record`` is not modified.

    Examples
    --------
    >>> redact_secrets({"env": {"AWS_SECRET_ACCESS_KEY": "abc"}, "workers": 2})
    {'env': {'AWS_SECRET_ACCESS_KEY': '<redacted>'}, 'workers': 2}
    >>> redact_secrets({"store": "s3://me:hunter2@host/bucket"})
    {'store': 's3://me:<redacted>@host/bucket'}
    """
    if isinstance(record, dict):
        if _ENVIRONMENT_KEYS.match(key):
            return {k: REDACTED for k in record}
        return {k: redact_secrets(v, key=str(k)) for k, v in record.items()}
    if isinstance(record, (list, tuple)):
        if _ENVIRONMENT_KEYS.match(key):
            return [_redact_assignment(v) for v in record]
        return [redact_secrets(v, key=key) for v in record]
    if isinstance(record, str):
        if _SECRET_KEYS.search(key) and record:
            return REDACTED
        return _redact_value(record)
    return record


def _redact_assignment(item: Any) -> Any:
    """``NAME=value`` keeps its name; anything else in an environment list goes."""
    if isinstance(item, str) and "=" in item:
        return f"{item.split('=', 1)[0]}={REDACTED}"
    if isinstance(item, dict) and "name" in item:
        return {**item, **{k: REDACTED for k in item if k != "name"}}
    return REDACTED
