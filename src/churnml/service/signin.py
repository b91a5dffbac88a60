"""The sign-in and sign-out handlers of the CSM pages, on the shared :mod:`churnml.service.auth`.

Sign-in takes a token (the application token or a user's), and gives the browser a session cookie
(:mod:`churnml.service.sessions`), never the token. Both forms are CSRF-protected: the sign-in form
by a random token also set as a cookie, the sign-out form by a token bound to the session, and both
refuse a request whose ``Origin`` (or ``Referer``) is another site.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from churnml.service.auth import AUTH_SCOPE_KEY, IDENTITY_SCOPE_KEY, Authenticator, Identity
from churnml.service.sessions import CSRF_COOKIE, SESSION_COOKIE, same_origin

__all__ = ["NO_SIGN_IN", "SignIn", "form_allowed", "form_csrf", "signed_in_context"]

log = logging.getLogger(__name__)

FORM_LIMITS: dict[str, int] = {"max_files": 0, "max_fields": 10, "max_part_size": 8 * 1024}
CSRF_MAX_AGE = 3600  # a sign-in form older than an hour is reloaded
NO_SIGN_IN = "(no sign-in)"  # who wrote an entry when the service asks for no token
Render = Callable[..., Response]


def _base(request: Request) -> str:
    return request.scope.get("root_path", "").rstrip("/")


def _cookie_path(request: Request) -> str:
    return _base(request) or "/"


def signed_in_context(request: Request) -> dict[str, Any]:
    """What the page header shows: who is signed in, the sign-out form's CSRF token, and the token of
    the forms that record something (:func:`form_csrf`)."""
    identity: Identity | None = request.scope.get(IDENTITY_SCOPE_KEY)
    auth: Authenticator | None = request.scope.get(AUTH_SCOPE_KEY)
    if identity is None or auth is None:
        return {"user": None, "logout_csrf": None, "form_csrf": form_csrf(request)}
    csrf = auth.signer.csrf_for(identity.session) if identity.session is not None else None
    return {"user": identity.name, "logout_csrf": csrf, "form_csrf": form_csrf(request)}


def form_csrf(request: Request) -> str | None:
    """The CSRF token of the pages' forms that record something: bound to the page session, like the
    sign-out form's; without sign-in (no token configured), one per service key."""
    identity: Identity | None = request.scope.get(IDENTITY_SCOPE_KEY)
    auth: Authenticator | None = request.scope.get(AUTH_SCOPE_KEY)
    if auth is None:
        return None
    if identity is not None and identity.session is not None:
        return auth.signer.csrf_for(identity.session)
    return auth.signer.csrf_unsigned_in() if identity is None else None


def _public(request: Request) -> tuple[str, str]:
    """The scheme and host the browser used (behind a trusted proxy, what it forwarded)."""
    auth: Authenticator | None = request.scope.get(AUTH_SCOPE_KEY)
    if auth is None:
        return request.url.scheme, request.headers.get("host", "").strip().lower()
    return auth.public_origin(request.scope)


def _same_site(request: Request) -> bool:
    return same_origin(request.scope, _public(request)[1])


def form_allowed(request: Request, sent: str) -> bool:
    """Whether a form that records something may be taken: from these pages (Origin) with their CSRF
    token. A request with a bearer token carries no ambient credential, so it needs no CSRF token."""
    if not _same_site(request):
        return False
    identity: Identity | None = request.scope.get(IDENTITY_SCOPE_KEY)
    if identity is not None and identity.session is None:
        return True
    expected = form_csrf(request)
    return bool(expected) and bool(sent) and hmac.compare_digest(sent, expected or "")


class SignIn:
    """``GET/POST /login`` and ``POST /logout``; ``render(request, template, status, **context)``
    draws the pages' templates, ``safe_next(request, target)`` keeps redirects inside the pages."""

    def __init__(self, render: Render, safe_next: Callable[[Request, str], str]) -> None:
        self.render, self.safe_next = render, safe_next

    def _form(self, request: Request, status: int, target: str, csrf: str, error: str | None) -> Response:
        response = self.render(request, "login.html", status, next=target, error=error, csrf=csrf,
                               user=None, logout_csrf=None, form_csrf=None)  # fmt: skip
        response.set_cookie(CSRF_COOKIE, csrf, max_age=CSRF_MAX_AGE, path=_cookie_path(request), httponly=True,
                            samesite="strict", secure=_public(request)[0] == "https")  # fmt: skip
        return response

    async def login(self, request: Request) -> Response:
        auth: Authenticator = request.scope[AUTH_SCOPE_KEY]
        fields = request.query_params if request.method == "GET" else await request.form(**FORM_LIMITS)
        target = self.safe_next(request, str(fields.get("next", "")))
        if not auth.enabled:  # no token and no user: nothing to sign in to
            return RedirectResponse(target, status_code=303)
        csrf = request.cookies.get(CSRF_COOKIE) or auth.signer.new_csrf()
        if request.method == "GET":
            return self._form(request, 200, target, csrf, None)
        sent = str(fields.get("csrf", ""))
        if (
            not _same_site(request)
            or not sent
            or not hmac.compare_digest(sent, request.cookies.get(CSRF_COOKIE, ""))
        ):
            log.warning("pages: sign-in refused: from another site or without the form's CSRF token")
            return self._form(request, 403, target, auth.signer.new_csrf(),
                              "This sign-in form has expired or came from another site. Please try again.")  # fmt: skip
        client = auth.client(request.scope)
        identity, wait = auth.sign_in(client, str(fields.get("token", "")))
        if identity is None and wait:
            response = self._form(
                request, 429, target, csrf, f"Too many wrong tokens. Try again in {wait} seconds."
            )
            response.headers["Retry-After"] = str(wait)
            return response
        if identity is None:
            return self._form(request, 401, target, csrf, "That token is not right.")
        log.info("pages: %s signed in from %s", identity.name, client)
        response = RedirectResponse(target, status_code=303)
        response.set_cookie(SESSION_COOKIE, auth.session_cookie(identity), max_age=auth.signer.max_age,
                            path=_cookie_path(request), httponly=True, samesite="strict",
                            secure=_public(request)[0] == "https")  # fmt: skip
        response.delete_cookie(CSRF_COOKIE, path=_cookie_path(request), httponly=True, samesite="strict")
        return response

    async def logout(self, request: Request) -> Response:
        identity: Identity | None = request.scope.get(IDENTITY_SCOPE_KEY)
        auth: Authenticator = request.scope[AUTH_SCOPE_KEY]
        if identity is not None and identity.session is not None:
            sent = str((await request.form(**FORM_LIMITS)).get("csrf", ""))
            expected = auth.signer.csrf_for(identity.session)
            if not _same_site(request) or not hmac.compare_digest(sent, expected):
                log.warning("pages: sign-out refused: from another site or without the form's CSRF token")
                return self.render(request, "message.html", 403, title="Sign-out refused", command=None,
                                   text="This sign-out came from another site or an old page. Sign out "
                                        "from the button at the top of a page.")  # fmt: skip
            auth.signer.revoke(identity.session)
            log.info("pages: %s signed out", identity.name)
        response = RedirectResponse(f"{_base(request)}/login", status_code=303)
        response.delete_cookie(SESSION_COOKIE, path=_cookie_path(request), httponly=True, samesite="strict")
        return response
