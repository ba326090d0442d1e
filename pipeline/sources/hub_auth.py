"""Which URLs get the HuggingFace token: those on the configured hub endpoint only."""

from __future__ import annotations

import os
from urllib.parse import urlsplit

DEFAULT_HUB = "https://huggingface.co"


def hub_endpoint() -> str:
    """The hub the token belongs to: ``HF_ENDPOINT`` if set, else huggingface.co."""
    return (os.environ.get("HF_ENDPOINT") or DEFAULT_HUB).rstrip("/")


def _origin(url: str) -> tuple[str, str, int | None]:
    u = urlsplit(url)
    port = u.port or {"https": 443, "http": 80}.get(u.scheme)
    return u.scheme.lower(), (u.hostname or "").lower(), port


def token_allowed(url: str) -> bool:
    """Whether ``url`` is on the configured hub endpoint: same scheme, host and port.

    The default endpoint is https, so the token never travels in clear text unless the user
    configured a plain-http endpoint themselves (a local hub, as the tests do).
    """
    try:
        return _origin(url) == _origin(hub_endpoint())
    except ValueError:  # a malformed port: not the hub
        return False


def auth_headers(url: str) -> dict[str, str]:
    """The HuggingFace token for URLs on the configured hub endpoint only; never logged."""
    token = os.environ.get("HF_TOKEN")
    return {"Authorization": f"Bearer {token}"} if token and token_allowed(url) else {}
