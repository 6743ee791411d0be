"""Who may change policy from the page. The dashboard acts with the coordinator's
identity, so reaching the page must not be enough: as Jupyter does, it makes a secret
token at start, prints it in a URL and writes it to a file only its user can read. A
browser that presents it once (`/?token=...`) gets a session cookie (HttpOnly,
SameSite=Strict), and only a request carrying such a session, or the token itself in an
`Authorization: token ...` header (scripts), may POST /api/policy.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

COOKIE = "icx_dashboard_session"


class Sessions:
    """The token of this run and the sessions it opened (in memory: a restart makes a
    new token and forgets every session)."""

    def __init__(self, token: str | None = None) -> None:
        self.token = token or secrets.token_urlsafe(32)
        self._sessions: set[str] = set()

    def token_matches(self, presented: str) -> bool:
        return secrets.compare_digest(presented.encode(), self.token.encode())

    def open(self, presented: str) -> str | None:
        """A new session id for the right token, else None."""
        if not self.token_matches(presented):
            return None
        session = secrets.token_urlsafe(32)
        self._sessions.add(session)
        return session

    def valid(self, session: str | None) -> bool:
        return session is not None and session in self._sessions

    def authorised(self, session: str | None, authorization: str | None) -> bool:
        """A session opened with the token, or the token in an Authorization header."""
        if self.valid(session):
            return True
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
