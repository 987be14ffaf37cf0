"""Users, logins and their limits, as Portainer 2.21.4 handles them.

* ``POST /api/auth`` (``api/http/handler/auth/authenticate.go``): ``{Username, Password}``
  (both required, else 400); a wrong user or password is 422 "Invalid credentials"; success is
  ``{"jwt"}``, an HS256 JWT (``api/jwt/jwt.go``: id, username, role, iat, exp after the default
  session of 8 h, ``portainer.DefaultUserSessionTimeout``).
* The login rate limit (``api/http/security/rate_limiter.go``, ``api/http/server.go``:
  ``NewRateLimiter(10, 1*time.Second, 1*time.Hour)``; the limiter is g07cha/defender): per
  remote address a token bucket of 10 that refills one a second (``rate.Every(1s)``, burst
  10); the request that finds it empty bans the address for an hour, and every request to a
  limited route then answers 403 "Access denied". The same limiter guards
  ``PUT /api/users/{id}/passwd`` (``users/handler.go``).
* A token is refused (401) when it is missing, does not verify, has expired, or was issued
  before the user's password last changed (``ParseAndVerifyToken``: ``TokenIssueAt > iat``).
* Passwords (``security/passwordStrengthCheck.go``): at least ``RequiredPasswordLength``
  bytes, 12 by default (``api/datastore/init.go``). ``--admin-password-file`` creates the
  admin "admin" at the first start without that check (``cmd/portainer/main.go``); a password
  change (``users/user_update_password.go``) and ``/users/admin/init`` apply it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import threading
import time
from dataclasses import dataclass, field

from .api import HandlerError, Request, Router, decode

SESSION_SECONDS = 8 * 3600
REQUIRED_PASSWORD_LENGTH = 12
ADMINISTRATOR_ROLE = 1


class RateLimiter:
    """defender.Inc over rate.NewLimiter(rate.Every(1s), 10), per address."""

    def __init__(self, burst: int = 10, every: float = 1.0, ban: float = 3600.0):
        self.burst, self.every, self.ban = burst, every, ban
        self.clients: dict[str, dict] = {}
        self.lock = threading.Lock()

    def banned(self, address: str) -> bool:
        """Count one request; True when the address is (now) banned."""
        with self.lock:
            now = time.monotonic()
            c = self.clients.setdefault(address, {"tokens": float(self.burst), "last": now,
                                                  "banned": False, "expire": 0.0})
            if c["banned"] and now > c["expire"]:
                c["banned"] = False
            if c["banned"]:
                return True
            c["tokens"] = min(self.burst, c["tokens"] + (now - c["last"]) / self.every)
            c["last"] = now
            if c["tokens"] >= 1:
                c["tokens"] -= 1
                return False
            c["banned"], c["expire"] = True, now + self.ban
            return True

    def lift(self) -> None:
        """The hour has passed (a test's hook)."""
        with self.lock:
            self.clients.clear()


def limited(limiter: RateLimiter, request: Request) -> None:
    """``LimitAccess``: 403 for a banned address, before the handler runs."""
    if limiter.banned(request.address):
        raise HandlerError(403, "Access denied", "Access denied to resource")


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _hash(password: str) -> str:
    return hashlib.sha256(password.encode()).hexdigest()


@dataclass
class Users:
    admin_password: str
    secret: bytes = field(default_factory=lambda: secrets.token_bytes(32))
    users: dict[int, dict] = field(default_factory=dict)
    logins: list[dict] = field(default_factory=list)      # every /api/auth: address, user, status

    def __post_init__(self):
        # --admin-password-file at the first start: user 1, "admin", no strength check.
        self.users[1] = {"Id": 1, "Username": "admin", "Role": ADMINISTRATOR_ROLE, "TokenIssueAt": 0,
                         "hash": _hash(self.admin_password.removesuffix("\n")),
                         "password": self.admin_password.removesuffix("\n")}

    def public(self, user: dict) -> dict:
        return {k: v for k, v in user.items() if k not in ("hash", "password")}

    def by_name(self, name: str):
        return next((u for u in self.users.values() if u["Username"] == name), None)

    def token(self, user: dict) -> str:
        now = int(time.time())
        claims = {"id": user["Id"], "username": user["Username"], "role": user["Role"], "scope": "default",
                  "forceChangePassword": False, "exp": now + SESSION_SECONDS, "jti": secrets.token_hex(8),
                  "iat": now}
        head = _b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
        body = _b64(json.dumps(claims).encode())
        sig = _b64(hmac.new(self.secret, f"{head}.{body}".encode(), hashlib.sha256).digest())
        return f"{head}.{body}.{sig}"

    def verify(self, request: Request) -> dict:
        """The bouncer's JWT lookup (``security/bouncer.go``): the token's claims, or 401."""
        token = (request.query.get("token") or [""])[0]
        if not token:
            header = request.headers.get("Authorization")
            if header is None:
                raise HandlerError(401, "A valid authorization token is missing", "Unauthorized")
            token = header.removeprefix("Bearer ")
        try:
            head, body, sig = token.split(".")
            good = _b64(hmac.new(self.secret, f"{head}.{body}".encode(), hashlib.sha256).digest())
            claims = json.loads(_unb64(body))
        except ValueError:
            raise HandlerError(401, "Invalid JWT token", "Unauthorized") from None
        user = self.users.get(claims.get("id"))
        if (not hmac.compare_digest(sig, good) or claims["exp"] < time.time() or user is None
                or user["TokenIssueAt"] > claims["iat"]):
            raise HandlerError(401, "Invalid JWT token", "Unauthorized")
        return claims


def register(router: Router, users: Users, limiter: RateLimiter) -> None:
    @router.add("POST", "/api/auth", "public")
    def authenticate(req: Request):
        limited(limiter, req)
        p = decode(req.body, {"Username": str, "Password": str}, "auth.authenticatePayload")
        entry = {"address": req.address, "user": p["Username"], "status": 200}
        users.logins.append(entry)
        try:
            if not p["Username"]:
                raise HandlerError(400, "Invalid request payload", "Invalid username")
            if not p["Password"]:
                raise HandlerError(400, "Invalid request payload", "Invalid password")
            user = users.by_name(p["Username"])
            if user is None or not hmac.compare_digest(user["hash"], _hash(p["Password"])):
                raise HandlerError(422, "Invalid credentials", "Unauthorized")
        except HandlerError as err:
            entry["status"] = err.status
            raise
        return 200, {"jwt": users.token(user)}

    @router.add("GET", "/api/users")
    def user_list(req: Request):
        return 200, [users.public(u) for u in users.users.values()]

    @router.add("GET", "/api/users/me")
    def user_me(req: Request):
        return 200, {**users.public(users.users[req.token["id"]]), "forceChangePassword": False}

    @router.add("POST", "/api/users/admin/init", "public")
    def admin_init(req: Request):
        p = decode(req.body, {"Username": str, "Password": str}, "users.adminInitPayload")
        if not p["Username"] or " " in p["Username"]:
            raise HandlerError(400, "Invalid request payload", "Invalid username. Must not contain any whitespace")
        if not p["Password"]:
            raise HandlerError(400, "Invalid request payload", "Invalid password")
        raise HandlerError(409, "Unable to create administrator user", "An administrator user already exists")

    @router.add("PUT", r"/api/users/(?P<id>\d+)")
    def user_update(req: Request):
        p = decode(req.body, {"Username": str, "Password": str, "NewPassword": str, "Role": int},
                   "users.userUpdatePayload")
        if " " in p["Username"]:
            raise HandlerError(400, "Invalid request payload", "invalid username. Must not contain any whitespace")
        user = _user(users, req)
        if p["Username"] and p["Username"] != user["Username"]:
            other = users.by_name(p["Username"])
            if other is not None and other["Id"] != user["Id"]:
                raise HandlerError(409, "Another user with the same username already exists", "User already exists")
            user["Username"] = p["Username"]
        if p["NewPassword"]:
            _set_password(user, p["NewPassword"])
        return 200, users.public(user)

    @router.add("PUT", r"/api/users/(?P<id>\d+)/passwd")
    def user_update_password(req: Request):
        limited(limiter, req)
        p = decode(req.body, {"Password": str, "NewPassword": str}, "users.userUpdatePasswordPayload")
        if not p["Password"]:
            raise HandlerError(400, "Invalid request payload", "Invalid current password")
        if not p["NewPassword"]:
            raise HandlerError(400, "Invalid request payload", "Invalid new password")
        user = _user(users, req)
        if not hmac.compare_digest(user["hash"], _hash(p["Password"])):
            raise HandlerError(403, "Current password doesn't match",
                               "Current password does not match the password provided. Please try again")
        _set_password(user, p["NewPassword"])
        return 204, None


def _user(users: Users, req: Request) -> dict:
    user = users.users.get(int(req.match["id"]))
    if user is None:
        raise HandlerError(404, "Unable to find a user with the specified identifier inside the database",
                           "Object not found inside the database")
    return user


def _set_password(user: dict, new: str) -> None:
    if len(new.encode()) < REQUIRED_PASSWORD_LENGTH:
        raise HandlerError(400, "Password does not meet the minimum strength requirements")
    user["hash"], user["password"] = _hash(new), new
    # Tokens issued before this second no longer verify (strictly earlier: jwt.go compares >).
    user["TokenIssueAt"] = int(time.time())
