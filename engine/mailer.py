"""E-mail: the SMTP settings (stored in ``state.db``'s ``meta`` table, key ``smtp``; the password in the OS keyring as
``smtp-password/<appliance id>``) and sending one message through ``engine/net.py`` (purpose ``smtp``: the
allow-list, and the proxy unless the server is on the bypass list).

A password is only ever sent after STARTTLS (the settings refuse a user without it). Every failure is a
:class:`~engine.errors.MailError` with a stable code: ``LB_SMTP_UNREACHABLE`` (no connection), ``LB_SMTP_TLS``
(STARTTLS refused or the certificate not trusted), ``LB_SMTP_AUTH`` (user or password refused),
``LB_SMTP_REFUSED`` (the server refused the sender or the recipients), ``LB_SMTP_FAILED`` (anything else the server
said); the egress errors (``LB_EGRESS_REFUSED``, ``LB_PROXY_*``) pass through unchanged.
"""

from __future__ import annotations

import email.message
import email.utils
import json
import re
import smtplib
import socket
import ssl
from dataclasses import dataclass, replace
from typing import Any

from . import net
from .egress import MetaStore
from .errors import InvalidInput, LifeboatError, MailError
from .secrets import delete_secret, get_secret, set_secret

__all__ = ["SmtpSettings", "SmtpStore", "probe", "send_mail", "smtp_password_name"]

META_KEY = "smtp"
SCHEMA = 1
_ADDR = re.compile(r"^[^@\s<>,;\"']+@[A-Za-z0-9.-]+\.[A-Za-z0-9-]+$|^[^@\s<>,;\"']+@localhost$")


def smtp_password_name(appliance_id: str) -> str:
    return f"smtp-password/{appliance_id}"


def _check_address(a: str, what: str) -> str:
    a = a.strip()
    if not _ADDR.match(a) or len(a) > 254:
        raise InvalidInput(f"{what} {a!r} is not an e-mail address", field=what,
                           advice="Give addresses like ops@example.com, separated by commas.")
    return a


@dataclass(frozen=True, slots=True)
class SmtpSettings:
    """Where alert e-mails go. ``digest_seconds``: at most one e-mail per this many seconds (alerts in between are
    folded into the next one)."""

    host: str
    port: int
    starttls: bool = False
    user: str | None = None
    recipients: tuple[str, ...] = ()
    sender: str = "lifeboat@localhost"
    digest_seconds: float = 600.0

    def validate(self) -> SmtpSettings:
        if not self.host or " " in self.host or not 0 < self.port < 65536:
            raise InvalidInput(f"SMTP server {self.host}:{self.port} is not HOST:PORT", field="server",
                               advice="Give the SMTP server as HOST:PORT, e.g. smtp.example.com:587.")
        if not self.recipients:
            raise InvalidInput("no recipient for the alert e-mails", field="to",
                               advice="Give at least one address with --to ADDR[,ADDR].")
        for r in self.recipients:
            _check_address(r, "to")
        _check_address(self.sender, "from")
        if self.user is not None and (not self.user.strip() or any(not c.isprintable() for c in self.user)):
            raise InvalidInput(f"SMTP user {self.user!r} is not valid", field="user",
                               advice="Give the user name the SMTP server expects.")
        if self.user and not self.starttls:
            raise InvalidInput("an SMTP user and password are sent only over STARTTLS", field="starttls",
                               advice="Add --starttls (the server must offer it), or leave out --user for a relay "
                                      "that needs no login.")
        if not 1 <= self.digest_seconds <= 86400:
            raise InvalidInput(f"digest interval {self.digest_seconds} s is not 1 s to 1 day", field="digest")
        return self

    def to_dict(self) -> dict[str, Any]:
        return {"schema": SCHEMA, "server": f"{self.host}:{self.port}", "host": self.host, "port": self.port,
                "starttls": self.starttls, "user": self.user, "to": list(self.recipients), "from": self.sender,
                "digest_seconds": self.digest_seconds}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SmtpSettings:
        return cls(str(d["host"]), int(d["port"]), bool(d.get("starttls")), d.get("user") or None,
                   tuple(d.get("to") or ()), str(d.get("from") or "lifeboat@localhost"),
                   float(d.get("digest_seconds") or 600.0))

    @classmethod
    def parse(cls, server: str, to: str | list[str] | tuple[str, ...], *, starttls: bool = False,
              user: str | None = None, sender: str | None = None, digest_seconds: float = 600.0) -> SmtpSettings:
        host, port = net.parse_address(server, 25, what="server")
        rcpts = to.split(",") if isinstance(to, str) else list(to)
        s = cls(host, port, starttls, (user or "").strip() or None,
                tuple(r.strip() for r in rcpts if r.strip()),
                sender or f"lifeboat@{socket.gethostname() or 'localhost'}", digest_seconds)
        if sender is None and not _ADDR.match(s.sender):
            s = replace(s, sender="lifeboat@localhost")
        return s.validate()


class SmtpStore:
    """Load and save :class:`SmtpSettings` in ``state.db`` and the SMTP password in the keyring."""

    def __init__(self, db: MetaStore, appliance_id: str) -> None:
        self.db = db
        self.appliance_id = appliance_id

    def load(self) -> SmtpSettings | None:
        raw = self.db.get_meta(META_KEY)
        return SmtpSettings.from_dict(json.loads(raw)) if raw else None

    def save(self, settings: SmtpSettings, password: str | None = None) -> SmtpSettings:
        """Validate and store; ``password`` replaces the keyring entry (a user without one keeps the stored one)."""
        settings.validate()
        if settings.user and password:
            set_secret(smtp_password_name(self.appliance_id), password)
        elif not settings.user:
            delete_secret(smtp_password_name(self.appliance_id))
        self.db.set_meta(META_KEY, json.dumps(settings.to_dict(), sort_keys=True))
        return settings

    def password(self) -> str | None:
        return get_secret(smtp_password_name(self.appliance_id))


class _SMTP(smtplib.SMTP):
    """smtplib's client whose connection is made by net (allow-list, proxy)."""

    def _get_socket(self, host: str, port: int, timeout: float) -> socket.socket:  # type: ignore[override]
        return net.open_connection(host, port, timeout=timeout, purpose="smtp")


def _session(s: SmtpSettings, password: str | None, timeout: float,
             context: ssl.SSLContext | None) -> smtplib.SMTP:
    where = f"{s.host}:{s.port}"
    try:
        smtp = _SMTP(timeout=timeout)
        smtp._host = s.host  # type: ignore[attr-defined]  # the name STARTTLS checks the certificate against (smtplib sets it only in __init__)
        smtp.connect(s.host, s.port)
    except LifeboatError:
        raise
    except (OSError, smtplib.SMTPException) as exc:
        raise MailError(f"cannot reach the SMTP server {where}: {getattr(exc, 'strerror', None) or exc}",
                        code="LB_SMTP_UNREACHABLE", server=where,
                        advice=f"Check that {where} is the SMTP server's address and that it runs and is reachable "
                               "from the appliance (firewall, allow-list, proxy bypass list).") from None
    try:
        smtp.ehlo()
        if s.starttls:
            try:
                smtp.starttls(context=context or net.system_context())
            except smtplib.SMTPNotSupportedError:
                raise MailError(f"the SMTP server {where} does not offer STARTTLS", code="LB_SMTP_TLS", server=where,
                                advice="Use the server's submission port (usually 587) that offers STARTTLS, or "
                                       "leave out --starttls (and --user) for a relay on a trusted network.") from None
            except ssl.SSLError as exc:
                raise MailError(f"TLS with the SMTP server {where} failed: {exc}", code="LB_SMTP_TLS", server=where,
                                advice="The server's certificate must be trusted by the appliance's system CA store "
                                       "and name the server's host name.") from None
            smtp.ehlo()
        if s.user:
            try:
                # PLAIN (over TLS) when offered, one attempt: smtplib's login() would go on to LOGIN after a refusal,
                # which some servers answer by waiting for more input (a hang instead of a clear "wrong password").
                mechs = (smtp.esmtp_features.get("auth") or "").upper().split()
                if "PLAIN" in mechs:
                    smtp.user, smtp.password = s.user, password or ""
                    smtp.auth("PLAIN", smtp.auth_plain)
                else:
                    smtp.login(s.user, password or "")
            except smtplib.SMTPAuthenticationError as exc:
                raise MailError(f"the SMTP server {where} refused the login of {s.user!r}: {exc.smtp_code} "
                                f"{exc.smtp_error.decode(errors='replace') if isinstance(exc.smtp_error, bytes) else exc.smtp_error}",
                                code="LB_SMTP_AUTH", server=where,
                                advice="Set the right user and password: `lifeboat alerts smtp --home DIR ... --user U "
                                       "--password-stdin`.") from None
            except smtplib.SMTPNotSupportedError:
                raise MailError(f"the SMTP server {where} offers no login (AUTH)", code="LB_SMTP_AUTH", server=where,
                                advice="Leave out --user if the server relays without a login.") from None
        return smtp
    except BaseException:
        smtp.close()
        raise


def _wrap(exc: BaseException, where: str) -> LifeboatError:
    if isinstance(exc, LifeboatError):
        return exc
    if isinstance(exc, (smtplib.SMTPRecipientsRefused, smtplib.SMTPSenderRefused)):
        return MailError(f"the SMTP server {where} refused the message: {exc}", code="LB_SMTP_REFUSED", server=where,
                         advice="Check the recipients and the sender address (the server may relay only for its "
                                "own domains, or only after a login).")
    if isinstance(exc, smtplib.SMTPException):
        return MailError(f"the SMTP server {where} failed: {exc}", server=where)
    return MailError(f"the connection to the SMTP server {where} failed: {exc}", code="LB_SMTP_UNREACHABLE",
                     server=where)


def probe(s: SmtpSettings, password: str | None, *, timeout: float = 15.0,
          context: ssl.SSLContext | None = None) -> None:
    """Connect, EHLO, STARTTLS and log in as ``send_mail`` would, without sending anything (blocking)."""
    where = f"{s.host}:{s.port}"
    try:
        smtp = _session(s, password, timeout, context)
    except BaseException as exc:
        raise _wrap(exc, where) from None
    try:
        smtp.quit()
    except (OSError, smtplib.SMTPException):
        smtp.close()


def send_mail(s: SmtpSettings, password: str | None, subject: str, body: str, *, timeout: float = 30.0,
              context: ssl.SSLContext | None = None) -> str:
    """Send one plain-text e-mail to every recipient (blocking: run it in a worker thread). Returns its
    Message-ID; raises MailError (or an egress error) and sends nothing on failure."""
    where = f"{s.host}:{s.port}"
    msg = email.message.EmailMessage()
    msg["From"] = s.sender
    msg["To"] = ", ".join(s.recipients)
    msg["Subject"] = subject
    msg["Date"] = email.utils.formatdate(localtime=True)
    msg["Message-ID"] = mid = email.utils.make_msgid(domain="lifeboat")
    msg.set_content(body)
    try:
        smtp = _session(s, password, timeout, context)
    except BaseException as exc:
        raise _wrap(exc, where) from None
    try:
        smtp.send_message(msg)
    except BaseException as exc:
        smtp.close()
        raise _wrap(exc, where) from None
    try:
        smtp.quit()
    except (OSError, smtplib.SMTPException):
        smtp.close()
    return mid
