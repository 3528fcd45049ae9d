"""Who is acting: local accounts (Argon2id), OIDC identities, sign-in sessions, first-admin set-up."""

from engine.public import public_face

# The public face the dashboard and the pages import from (engine.public: each module loads when first asked).
__getattr__, __dir__ = public_face(__name__, {
    "accounts": ("Account", "add_account", "authenticate", "change_password", "create_first_admin", "list_accounts",
                 "reset_password", "set_disabled", "set_role", "setup_token_valid"),
    "oidc": ("oidc_user",),
    "sessions": ("Session", "check_session", "end_session", "list_sessions", "revoke_session", "start_session"),
    "trail": ("audit_actions", "read_audit_log", "verify_audit_log"),
})
