"""What every Redis client of the project passes for a `rediss://` URL."""

from __future__ import annotations

from typing import Any


def tls_options(url: str) -> dict[str, Any]:
    """Verify the server's name against its certificate on TLS connections.

    redis-py checks the certificate chain of a rediss:// server but not, by default, that the
    certificate names the host it connected to. A `ssl_check_hostname=false` in the URL's query
    still turns the check off: redis-py lets the URL's options override these.
    """
    return {"ssl_check_hostname": True} if url.lower().startswith("rediss://") else {}
