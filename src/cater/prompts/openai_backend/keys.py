"""Which key goes to which server: OpenAI's key only ever to https://api.openai.com, another server's key (or
none) to that server, and no OpenAI header that the environment would add; keys never kept in messages."""
from __future__ import annotations

import os
import re
from typing import Any

OPENAI_BASE_URL = "https://api.openai.com/v1"
OPENAI_KEY_ENV = "OPENAI_API_KEY"
_UNSET = object()  # api_key_env not given: OPENAI_API_KEY for OpenAI itself, an error for any other host


def is_openai_url(base_url: str | None) -> bool:
    """True for OpenAI's own API (`None` means it): https, host api.openai.com, default port, no user info."""
    if base_url is None:
        return True
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(str(base_url))
        port = parts.port
    except ValueError:
        return False
    return (parts.scheme == "https" and parts.hostname == "api.openai.com" and port in (None, 443)
            and parts.username is None and parts.password is None)


def resolve_api_key_env(base_url: str | None, api_key_env: Any) -> str | None:
    """The environment variable whose value is sent as the key, or None for "send no key"."""
    openai_host = is_openai_url(base_url)
    if api_key_env is _UNSET:
        if openai_host:
            return OPENAI_KEY_ENV
        raise ValueError(
            f"base_url {base_url!r} is not OpenAI's API ({OPENAI_BASE_URL}): set api_key_env to the environment "
            f"variable holding that server's key, or api_key_env: null to send no key ({OPENAI_KEY_ENV} is only "
            f"ever sent to OpenAI)")
    if api_key_env is None or (isinstance(api_key_env, str) and api_key_env.lower() == "none"):
        return None
    if not isinstance(api_key_env, str) or not api_key_env:
        raise ValueError("api_key_env must name an environment variable (or be null: send no key)")
    if api_key_env == OPENAI_KEY_ENV and not openai_host:
        raise ValueError(
            f"api_key_env: {OPENAI_KEY_ENV} is only sent to https://api.openai.com; base_url {base_url!r} is another "
            f"server: give its key a variable of its own (or api_key_env: null to send no key)")
    return api_key_env


def api_key_from_env(api_key_env: str | None) -> str | None:
    """The key to send, read from the environment only when a request has to be sent (None: send no key)."""
    key = None
    if api_key_env is not None:
        key = os.environ.get(api_key_env)
        if not key:
            raise ValueError(
                f"environment variable {api_key_env} is not set; the openai prompt backend needs an API key "
                f"(set it, or name another variable with prompts.generators.<name>.api_key_env)"
            )
    return key


def request_headers(openai_host: bool, key: str | None) -> dict[str, Any]:
    """Headers that override whatever the client took from OPENAI_* variables (OPENAI_CUSTOM_HEADERS,
    OPENAI_ORG_ID, OPENAI_PROJECT_ID): another server gets exactly its own key, or no Authorization at all."""
    if openai_host and key:
        return {}
    import openai

    return {"extra_headers": {"Authorization": f"Bearer {key}" if key else openai.Omit(),
                              "OpenAI-Organization": openai.Omit(), "OpenAI-Project": openai.Omit()}}


def _redact(text: Any, key: str) -> str:
    """`text` without the key and without anything shaped like an OpenAI key."""
    text = str(text).replace(key, "<redacted>") if key else str(text)
    return re.sub(r"sk-[A-Za-z0-9_*\-]{4,}", "sk-<redacted>", text)
