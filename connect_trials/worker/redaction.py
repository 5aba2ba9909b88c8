"""URIs and texts as we print them: without credentials. Standard library only, so that the
worker and the client share one set of rules (the client re-exports it from ``tracking.uris``)."""

from __future__ import annotations

import re

# A URL inside a text: scheme, optional userinfo, the rest up to whitespace or a quote, then
# an optional query and fragment (either may hold credentials).
_URL = re.compile(
    r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<userinfo>[^/@\s'\"]*@)?(?P<rest>[^\s'\"?#]*)"
    r"(?P<query>\?[^\s'\"#]*)?(?P<fragment>#[^\s'\"]*)?"
)
_TOKEN_PARAM = re.compile(r";token=[^;]*")


def redacted_text(text: str) -> str:
    """``text`` (an exception's message, say: MLflow's name the URL they called) with every
    URL's userinfo replaced by ``***@``, its query and fragment dropped and a Connect token
    hidden."""

    def redact(match: re.Match[str]) -> str:
        userinfo = "***@" if match.group("userinfo") else ""
        rest = _TOKEN_PARAM.sub(";token=***", match.group("rest"))  # sc://host:port/;token=...
        return f"{match.group('scheme')}{userinfo}{rest}"

    return _URL.sub(redact, text)


def redacted_uri(uri: str) -> str:
    """The URI as we print it: without its userinfo (``user:password@``), its query and its
    fragment, which may hold credentials too."""
    return redacted_text(uri)
