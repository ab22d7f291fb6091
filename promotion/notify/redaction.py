"""Text about a delivery with every configured URL and secret taken out.

`promotion.errors.redact` knows URI userinfo and secret-looking query parameters; an endpoint or
an Apprise URL can hold a token anywhere (`slack://TokenA/TokenB/TokenC`, `https://host/hooks/
<token>`), and a library's message may quote any part of it (its host, a path segment). So every
piece of every configured URL, raw and percent-decoded, is removed from any text that comes from
outside (an exception, a library's log line) before it is shown, logged or recorded.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from urllib.parse import parse_qsl, unquote, urlsplit

from promotion.errors import redact

MIN_PIECE = 4  # shorter pieces of a URL (a port, "v1") hold no secret worth the noise
MASK = "***"


def _pieces(value: str) -> set[str]:
    found = {value}
    try:
        parts = urlsplit(value)
        found |= {parts.netloc, parts.path, parts.query, parts.fragment,
                  parts.hostname or "", parts.username or "", parts.password or ""}
        found |= set(re.split(r"[/@:;]+", parts.netloc + "/" + parts.path))
        for key, item in parse_qsl(parts.query, keep_blank_values=True):
            found |= {key + "=" + item, item}
    except ValueError:  # not a URL (a secret): the value itself is enough
        pass
    found |= {unquote(p) for p in found}
    return {p for p in found if len(p) >= MIN_PIECE}


class Redactor:
    def __init__(self, secrets: Iterable[str]) -> None:
        pieces: set[str] = set()
        for secret in secrets:
            pieces |= _pieces(secret)
        # Longest first: a URL goes as a whole before its host does.
        self._pieces = sorted(pieces, key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for piece in self._pieces:
            text = text.replace(piece, MASK)
        return redact(text)
