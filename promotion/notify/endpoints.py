"""Decision events to HTTP(S) endpoints: one POST of the payload, signed as MLflow signs its
webhooks, with bounded retries. Never raises: the outcome is a `Sent`.

A delivery is one delivery id (a uuid4) for all its attempts, so a receiver that already handled
it can tell a retry from a new event; each attempt is signed afresh with its own timestamp.
Retried: connection errors, timeouts, 429 and 5xx, at most `attempts` attempts in all, after
BACKOFF seconds. Not retried: any other answer (a 4xx says the request itself is refused).
Redirects are not followed (a signed body goes where it was configured to go, or nowhere).
The standard library's HTTP client is used: nothing is imported until an event is sent.
"""

from __future__ import annotations

import base64
import socket
import ssl
import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit, urlunsplit

from promotion import __version__
from promotion.engine.signing import DELIVERY_ID_HEADER, TIMESTAMP_HEADER, sign
from promotion.report.events import TYPE, Sent

if TYPE_CHECKING:
    import urllib.request

BACKOFF = (0.5, 1.5)  # seconds before the 2nd and the 3rd attempt
EVENT_HEADER = "X-Promote-Event"


def scheme_of(url: str) -> str:
    try:
        return urlsplit(url).scheme.lower()
    except ValueError:
        return ""


def deliver(url: str, body: bytes, *, secret: str | None, timeout: float, attempts: int,
            index: int, of: int, clean: Callable[[str], str],
            sleep: Callable[[float], None] = time.sleep) -> Sent:
    """POST `body` to `url`; `clean` removes configured secrets from any foreign text."""
    scheme = scheme_of(url)
    target = _target(url)
    if target is None:
        return Sent(index, of, scheme, False, 0, "not an http(s) URL with a host")
    where, auth = target
    delivery = str(uuid.uuid4())
    why = ""
    for attempt in range(1, attempts + 1):
        if attempt > 1:
            sleep(BACKOFF[min(attempt - 2, len(BACKOFF) - 1)])
        status, why = _attempt(where, auth, body, secret, delivery, timeout, clean)
        if status is not None and 200 <= status < 300:
            return Sent(index, of, scheme, True, attempt)
        if status is not None and not (status == 429 or status >= 500):
            return Sent(index, of, scheme, False, attempt, why)
    return Sent(index, of, scheme, False, attempts,
                f"{why} after {attempts} attempts" if attempts > 1 else why)


def _target(url: str) -> tuple[str, str | None] | None:
    """The URL without its userinfo, and the Basic credentials it held (the standard library
    does not take them from the URL)."""
    try:
        parts = urlsplit(url.strip())
        host = parts.hostname
        port = parts.port  # a malformed port raises here
    except ValueError:
        return None
    if parts.scheme.lower() not in ("http", "https") or not host:
        return None
    auth = None
    if parts.username is not None:
        user, password = unquote(parts.username), unquote(parts.password or "")
        auth = base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
    netloc = (f"[{host}]" if ":" in host else host) + (f":{port}" if port else "")
    return urlunsplit((parts.scheme, netloc, parts.path or "/", parts.query, "")), auth


def _attempt(where: str, auth: str | None, body: bytes, secret: str | None, delivery: str,
             timeout: float, clean: Callable[[str], str]) -> tuple[int | None, str]:
    """(the HTTP status, or None when there was none; why it is not a success)."""
    import http.client
    import urllib.error
    import urllib.request

    stamp = int(time.time())
    headers = {"Content-Type": "application/json", "User-Agent": _agent(), EVENT_HEADER: TYPE,
               DELIVERY_ID_HEADER: delivery, TIMESTAMP_HEADER: str(stamp)}
    if secret:
        headers.update(sign(secret, delivery, stamp, body))
    if auth:
        headers["Authorization"] = f"Basic {auth}"
    request = urllib.request.Request(where, data=body, headers=headers, method="POST")
    try:
        with _opener().open(request, timeout=timeout) as response:
            status = int(response.status)
    except urllib.error.HTTPError as exc:
        status = int(exc.code)
        exc.close()
    except urllib.error.URLError as exc:
        return None, _failure(exc.reason, timeout, clean)
    except (OSError, http.client.HTTPException, ValueError) as exc:
        return None, _failure(exc, timeout, clean)
    if 300 <= status < 400:
        return status, f"HTTP {status} (redirects are not followed)"
    return status, f"HTTP {status}"


def _failure(reason: Any, timeout: float, clean: Callable[[str], str]) -> str:
    """Why an attempt got no answer, in a few words (any foreign text cleaned)."""
    import http.client

    if isinstance(reason, TimeoutError | socket.timeout):
        return f"no answer within {timeout:g} s"
    if isinstance(reason, ConnectionRefusedError):
        return "connection refused"
    if isinstance(reason, ConnectionError):
        return f"connection failed ({type(reason).__name__})"
    if isinstance(reason, socket.gaierror):
        return "host name not resolved"
    if isinstance(reason, ssl.SSLError):
        return f"TLS failed ({clean(str(getattr(reason, 'reason', None) or 'handshake'))})"
    if isinstance(reason, http.client.HTTPException):
        return f"not an HTTP answer ({type(reason).__name__})"
    return clean(f"{type(reason).__name__}: {reason}") if not isinstance(reason, str) \
        else clean(reason)


def _agent() -> str:
    return f"promote/{__version__}"


def _opener() -> urllib.request.OpenerDirector:
    import urllib.request

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args: Any, **kwargs: Any) -> None:
            return None  # the 3xx is raised as an HTTPError, and said as such

    return urllib.request.build_opener(NoRedirect)
