"""An OIDC identity (the ID token's claims, as Streamlit's st.user holds them after st.login) to a RadLens
user: `sub@issuer` as the id, the display name, and the role mapped from a configurable claim.

Authlib (inside st.login) already checks the token's signature, issuer, audience and nonce; this checks
audience, issuer and nonce again on what reached the page, so a cookie minted for another client or
provider cannot sign in here."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from engine.config import AuthSettings
from engine.context import ACCOUNT_ROLES, User
from engine.errors import LoginFailed, SessionExpired

__all__ = ["oidc_user"]


def oidc_user(claims: Mapping[str, Any], settings: AuthSettings, client_id: str, issuer: str,
              now: float | None = None) -> User:
    """The user for these claims, or LoginFailed saying what is missing (no role is ever guessed);
    SessionExpired when the provider sign-in is older than a session may last (its cookie lives 30 days)."""
    audience = claims.get("aud")
    audiences = audience if isinstance(audience, list) else [audience]
    if client_id not in audiences:
        raise LoginFailed(f"the identity token was issued for another application (audience {audience!r})")
    if issuer and claims.get("iss") != issuer:
        raise LoginFailed(f"the identity token comes from another provider ({claims.get('iss')!r})")
    if not claims.get("nonce"):
        raise LoginFailed("the identity token carries no nonce: sign in again")
    signed_in = claims.get("auth_time") or claims.get("iat") or 0
    if (now or time.time()) - float(signed_in) > settings.max_hours * 3600:
        raise SessionExpired(f"your sign-in is more than {settings.max_hours:g} hours old: sign in again")
    if not claims.get("sub"):
        raise LoginFailed("the identity token names no subject")
    values = claims.get(settings.oidc_role_claim) or []
    values = [values] if isinstance(values, str) else list(values)
    mapping = dict(settings.oidc_roles)
    roles = [mapping[v] for v in values if v in mapping and mapping[v] in ACCOUNT_ROLES]
    if not roles:
        raise LoginFailed(f"your account has no RadLens role: the identity provider must put one of "
                          f"{', '.join(mapping)} in the '{settings.oidc_role_claim}' claim")
    role = next(r for r in ACCOUNT_ROLES if r in roles)  # one role per session: the first granted, in this order
    name = str(claims.get("name") or claims.get("preferred_username") or claims.get("email") or claims["sub"])
    return User(f"{claims['sub']}@{claims.get('iss', '')}", name[:80], role)
