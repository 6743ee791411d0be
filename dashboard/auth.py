"""Who may read the dashboard and change policy from it. The dashboard acts with the
coordinator's identity, so reaching its port must not be enough: as Jupyter does, it makes
a secret token at start, prints it in a URL and writes it to a file only its user can
read. A browser that presents it once (`/?token=...`) gets a session cookie (HttpOnly,
SameSite=Strict); only a request carrying such a session, or the token itself in an
`Authorization: token ...` header (scripts), may read /api/* or the events.

Changing policy with a session also needs the session's CSRF value in the `X-ICX-CSRF`
header (the page has it; another origin cannot read it or set the header without a CORS
preflight the dashboard never answers). SameSite does not stop a form posted from
another port of the same host: that is the same site.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

COOKIE = "icx_dashboard_session"
CSRF_HEADER = "X-ICX-CSRF"


class Sessions:
    """The token of this run and the sessions it opened (in memory: a restart makes a
    new token and forgets every session)."""

    def __init__(self, token: str | None = None) -> None:
        self.token = token or secrets.token_urlsafe(32)
        self._csrf: dict[str, str] = {}  # session id -> its CSRF value

    def token_matches(self, presented: str) -> bool:
        return secrets.compare_digest(presented.encode(), self.token.encode())

    def open(self, presented: str) -> str | None:
        """A new session id for the right token, else None."""
        if not self.token_matches(presented):
            return None
        session = secrets.token_urlsafe(32)
        self._csrf[session] = secrets.token_urlsafe(32)
        return session

    def valid(self, session: str | None) -> bool:
        return session is not None and session in self._csrf

    def csrf_of(self, session: str | None) -> str:
        """The CSRF value of a valid session, else ''."""
        return self._csrf.get(session, "") if session is not None else ""

    def authorised(self, session: str | None, authorization: str | None) -> bool:
        """A session opened with the token, or the token in an Authorization header."""
        if self.valid(session):
            return True
        return self._token_header(authorization)

    def may_change(self, session: str | None, authorization: str | None, csrf: str | None) -> bool:
        """The token in an Authorization header, or a session with its CSRF value."""
        if self._token_header(authorization):
            return True
        expected = self.csrf_of(session)
        return bool(expected) and secrets.compare_digest((csrf or "").encode(), expected.encode())

    def _token_header(self, authorization: str | None) -> bool:
        scheme, _, value = (authorization or "").partition(" ")
        return scheme.lower() == "token" and bool(value) and self.token_matches(value.strip())


def write_token_file(path: Path, token: str) -> None:
    """The token alone in `path`, readable only by its owner (0600 from creation on)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(token + "\n")


def default_token_file(port: int) -> Path:
    """$XDG_RUNTIME_DIR/icx (else ~/.local/state/icx)/dashboard-PORT.token."""
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    base = Path(runtime) / "icx" if runtime else Path.home() / ".local" / "state" / "icx"
    return base / f"dashboard-{port}.token"
