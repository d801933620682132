"""Passwords (scrypt, stdlib) and users; the app's login and the CLI's `users add` both come here."""
from __future__ import annotations

import hashlib
import hmac
import os
import secrets

from .store import Store

# scrypt cost: n=2**14, r=8, p=1 (~16 MiB, tens of ms): the interactive-login setting from RFC 7914 §2.
_N, _R, _P, _DKLEN = 2 ** 14, 8, 1, 32
ADMIN = "admin"


def hash_password(password: str) -> str:
    """-> 'scrypt$n$r$p$salt_hex$hash_hex'."""
    if not password:
        raise ValueError("password must not be empty")
    salt = os.urandom(16)
    dk = hashlib.scrypt(password.encode(), salt=salt, n=_N, r=_R, p=_P, dklen=_DKLEN)
    return f"scrypt${_N}${_R}${_P}${salt.hex()}${dk.hex()}"


def verify_password(password: str, stored: str) -> bool:
    """Constant-time check of `password` against a `hash_password` string; False for malformed input."""
    try:
        algo, n, r, p, salt, want = stored.split("$")
        if algo != "scrypt":
            return False
        dk = hashlib.scrypt(password.encode(), salt=bytes.fromhex(salt), n=int(n), r=int(r), p=int(p),
                            dklen=len(want) // 2)
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(dk.hex(), want)


def add_user(store: Store, name: str, role: str, password: str | None = None) -> str:
    """Create a user; a missing password is generated. Returns the password (show it once)."""
    name = name.strip()
    if not name or len(name) > 64 or any(c in name for c in "\r\n\t"):
        raise ValueError("user names are 1-64 characters without tabs or newlines")
    password = password or secrets.token_urlsafe(12)
    store.add_user(name, role, hash_password(password))
    return password


def authenticate(store: Store, name: str, password: str) -> dict | None:
    """The user row (without its hash) when name/password match an active user, else None."""
    user = store.get_user(name.strip())
    if not user or not user.get("active") or not verify_password(password, user["password_hash"]):
        return None
    return {k: v for k, v in user.items() if k != "password_hash"}


def ensure_admin(store: Store) -> str | None:
    """Create the lead 'admin' on first start. Password: $ANNOTATOR_ADMIN_PASSWORD, else generated.

    Returns the password when the user was created (print it once), None when it already existed.
    """
    if store.get_user(ADMIN):
        return None
    return add_user(store, ADMIN, "lead", os.environ.get("ANNOTATOR_ADMIN_PASSWORD"))
