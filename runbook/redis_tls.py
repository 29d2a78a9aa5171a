"""What every Redis client of the project passes for a `rediss://` URL."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl, urlsplit


def tls_options(url: str) -> dict[str, Any]:
    """Verify the server's name against its certificate on TLS connections.

    redis-py checks the certificate chain of a rediss:// server but not, by default, that the
    certificate names the host it connected to. A `ssl_check_hostname=false` in the URL's query
    still turns the check off: redis-py lets the URL's options override these. A URL that turns
    certificate checks off altogether (`ssl_cert_reqs=none`) gets no name check either: Python's
    ssl refuses a name check without a certificate, and no connection would be made at all.
    """
    if not url.lower().startswith("rediss://"):
        return {}
    query = {k.lower(): v.lower() for k, v in parse_qsl(urlsplit(url).query)}
    if query.get("ssl_cert_reqs") == "none":
        return {}
    return {"ssl_check_hostname": True}
