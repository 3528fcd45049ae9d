"""Who is acting: local accounts (Argon2id), OIDC identities, sign-in sessions, first-admin set-up."""
