"""Errors a user can meet.

Every error carries a stable ``code`` (shown to the operator, used by the console and in JSON output), a message
that says what went wrong, and ``advice`` that says what to do next. Errors that are network, storage or input
problems also subclass the built-in they are (``OSError``, ``TimeoutError``, ``ValueError``, ``PermissionError``), so
callers can catch either (the aiohttp habit).
"""

from __future__ import annotations

from typing import Any


class LifeboatError(Exception):
    """Base of all Lifeboat errors."""

    code = "LB_ERROR"
    advice = "See the appliance log for details."
    exit_code = 2

    def __init__(self, message: str, *, advice: str | None = None, code: str | None = None, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        if advice is not None:
            self.advice = advice
        if code is not None:
            self.code = code
        self.details = details

    def to_dict(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, "advice": self.advice, **({"details": self.details} if self.details else {})}

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


class InvalidInput(LifeboatError, ValueError):
    code = "LB_INVALID_INPUT"
    advice = "Check the command's arguments (--help lists them)."


class InvalidName(InvalidInput):
    code = "LB_INVALID_NAME"
    advice = ("Use 1-64 characters from A-Z a-z 0-9 . _ -, starting with a letter or digit (no spaces, slashes, "
              "'..' or control characters).")


class ExportRefused(InvalidInput):
    code = "LB_EXPORT_REFUSED"
    advice = "Name a new folder (Lifeboat creates it, 0700) or an existing empty folder that is not a symbolic link."


class RateLimited(LifeboatError):
    code = "LB_RATE_LIMITED"
    advice = "Too many refused attempts from this address; wait a minute, then try again with the right passphrase."


class NotFound(LifeboatError, LookupError):
    code = "LB_NOT_FOUND"
    advice = "List what exists with `lifeboat status`."


class UnknownMachine(NotFound):
    code = "LB_UNKNOWN_MACHINE"
    advice = "Register the machine's agent first (`lifeboat agent register`), then check the name with `lifeboat status`."


class UnknownPoint(NotFound):
    code = "LB_UNKNOWN_POINT"
    advice = "List the machine's recovery points with `lifeboat points --home DIR MACHINE`."


class UnknownPolicy(NotFound):
    code = "LB_UNKNOWN_POLICY"
    advice = "Create it with `lifeboat policy set --home DIR NAME`."


class AlreadyExists(LifeboatError):
    code = "LB_ALREADY_EXISTS"
    advice = "Choose another name, or remove the existing one first."


class Conflict(LifeboatError):
    code = "LB_CONFLICT"
    advice = "Wait for the running operation to finish, or clean it up first."


class NotInitialised(LifeboatError, FileNotFoundError):
    code = "LB_NOT_INITIALISED"
    advice = "Initialise the home first (`lifeboat appliance init --home DIR` or `lifeboat agent register ...`)."


class AuthError(LifeboatError, PermissionError):
    code = "LB_AUTH_FAILED"
    advice = "Check the connection passphrase (appliance home: passphrase.txt) and register again."


class WrongPassphrase(AuthError):
    code = "LB_WRONG_PASSPHRASE"
    advice = "Use the passphrase file written by `lifeboat appliance init` (HOME/passphrase.txt)."


class CertificateRefused(AuthError):
    code = "LB_CERTIFICATE_REFUSED"
    advice = "Register the agent with the appliance to obtain a client certificate (`lifeboat agent register`)."


class MachineRevoked(AuthError):
    code = "LB_MACHINE_REVOKED"
    advice = ("The machine was revoked on the appliance. If that was a mistake, an operator allows it back with "
              "`lifeboat machine restore-access --home DIR MACHINE`, then the agent registers again; or register "
              "the machine under a new name.")


class EgressRefused(AuthError):
    code = "LB_EGRESS_REFUSED"
    advice = "The appliance's outbound policy does not allow this destination; add it to the allow-list."


class ProxyAuthFailed(AuthError):
    """The outbound proxy refused the appliance's credentials (or asked for some and none are set)."""
    code = "LB_PROXY_AUTH"
    advice = ("Set the proxy's user and password: `lifeboat egress proxy --home DIR --url http://HOST:PORT --user U "
              "--password-stdin` (or the console's Network and cloud page); nothing was sent to the destination.")


class ProxyError(LifeboatError, ConnectionError):
    """The outbound proxy could not be reached (``LB_PROXY_UNREACHABLE``) or refused the tunnel (``LB_PROXY_REFUSED``)."""
    code = "LB_PROXY_UNREACHABLE"
    advice = ("Check the proxy's address (`lifeboat egress show --home DIR`) and that it runs and allows CONNECT to "
              "this port; traffic resumes by itself once it answers.")


class MailError(LifeboatError, ConnectionError):
    """The SMTP server could not be reached or refused the message (``LB_SMTP_*``)."""
    code = "LB_SMTP_FAILED"
    advice = ("Check the SMTP settings (`lifeboat alerts smtp --home DIR ...`): server, port, STARTTLS, user, "
              "password and recipients; then send a test e-mail (`lifeboat alerts test --home DIR`).")


class ApplianceUnreachable(LifeboatError, ConnectionError):
    code = "LB_APPLIANCE_UNREACHABLE"
    advice = "Start the appliance (`lifeboat appliance run --home DIR`) and check host, port and firewall."


class ApplianceNotRunning(ApplianceUnreachable):
    """Nothing listens on the home's control port (the connection was refused): no appliance runs for this home, as
    opposed to one that runs but does not answer in time. Same code; commands that may act locally tell them apart."""


class ProtocolError(LifeboatError, ConnectionError):
    code = "LB_PROTOCOL_ERROR"
    advice = "The peer sent something Lifeboat does not understand; check that both sides run the same version."


class IntegrityError(LifeboatError, OSError):
    code = "LB_INTEGRITY"
    advice = "Stored data failed verification; run a resync of the machine to heal the affected range."


class StorageError(LifeboatError, OSError):
    code = "LB_STORAGE"
    advice = "Check free space and permissions of the appliance home and vault."


class VaultFull(StorageError):
    code = "LB_VAULT_FULL"
    advice = ("The vault's filesystem is full: replication is paused (agents keep their changes) and resumes by "
              "itself when space returns. Free space on it, or move the vault to a larger disk.")


class CloudAuthFailed(AuthError):
    code = "LB_CLOUD_AUTH_FAILED"
    advice = ("The storage account refused the credentials: check the account URL and give the account key or a "
              "SAS token with read, write, list, delete and create rights on the container.")


class ContainerMissing(NotFound):
    code = "LB_CONTAINER_MISSING"
    advice = "Create the container in the storage account (or correct its name), then try again."


class CloudUnreachable(StorageError):
    code = "LB_CLOUD_UNREACHABLE"
    advice = ("The storage account did not answer (network, proxy, firewall or the service is busy). Replication "
              "waits and resumes by itself; check the account URL and the egress settings (`lifeboat egress check`).")


def is_no_space(exc: BaseException | None) -> bool:
    """Whether ``exc`` (or what caused it) is a full filesystem or quota (ENOSPC, EDQUOT)."""
    import errno
    seen = 0
    while exc is not None and seen < 8:
        if isinstance(exc, VaultFull) or (isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)):
            return True
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return False


class KeyringError(LifeboatError, RuntimeError):
    code = "LB_KEYRING"
    advice = ("No usable OS keyring was found. On a Linux desktop start the Secret Service (gnome-keyring); "
              "on Windows the Credential Manager is used.")


class ListenFailed(Conflict, OSError):
    code = "LB_LISTEN_FAILED"
    advice = "Choose another address or port (one that is free on the appliance), or stop what uses it."


class NotReady(LifeboatError):
    code = "LB_NOT_READY"
    advice = "Wait for initial replication to finish (`lifeboat status`)."


class HypervisorError(LifeboatError, OSError):
    """The recovery host's hypervisor (libvirt) refused or failed an operation."""
    code = "LB_HYPERVISOR"
    advice = ("Check that the recovery host runs (`scripts/recovery-host.sh status`, `virsh -c URI list --all`) and "
              "see its log; then try again.")


class BootTimeout(LifeboatError, TimeoutError):
    """A recovered VM did not say it booted in time; the message carries the console's last lines."""
    code = "LB_BOOT_TIMEOUT"
    advice = ("Read the VM's serial log (`lifeboat vm list` names it); fix the boot pattern with `lifeboat machine "
              "settings --boot-pattern`, or choose another point.")


class AlreadyFailedOver(Conflict):
    code = "LB_FAILED_OVER"
    advice = "Cancel the failover first (`lifeboat failover-cancel --home DIR MACHINE`)."


class FailoverCommitted(Conflict):
    """A committed failover is final: its point can no longer change, and it is not cancelled."""
    code = "LB_FAILOVER_COMMITTED"
    advice = ("The recovered machine runs from its committed images (`lifeboat vm list`); no other point can be "
              "chosen any more.")


class SourceUnreachable(NotReady):
    """A planned failover needs the source's agent connected (to quiesce it)."""
    code = "LB_SOURCE_UNREACHABLE"
    advice = ("Wait until the agent is connected (`lifeboat status`), or fail over unplanned (without --planned) "
              "from the latest point.")


class QuiesceTimeout(LifeboatError, TimeoutError):
    """The quiesced source's final point did not reach the vault in time."""
    code = "LB_QUIESCE_TIMEOUT"
    advice = ("The source stays quiesced until the agent reconnects; check the link (`lifeboat status`) and try "
              "again, or fail over unplanned.")


def from_dict(err: dict[str, Any], fallback: str) -> LifeboatError:
    """Rebuild the error an appliance sent (``{"code", "message", "advice", "details"}``) as its class."""
    code = str(err.get("code") or "LB_ERROR")
    cls = next((c for c in _all_errors() if c.code == code), LifeboatError)
    raw = err.get("details")
    details: dict[str, Any] = raw if isinstance(raw, dict) else {}
    return cls(str(err.get("message") or fallback), code=code, advice=err.get("advice"), **details)


def _all_errors() -> list[type[LifeboatError]]:
    out: list[type[LifeboatError]] = []
    todo: list[type[LifeboatError]] = [LifeboatError]
    while todo:
        c = todo.pop()
        out.append(c)
        todo.extend(c.__subclasses__())
    return out
