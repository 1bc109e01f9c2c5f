"""The machine rows of state.db as the appliance's parts share them.

``MachineState`` is the one reader and writer of the machine rows (and the event log and the policy lookup): the
process server, the applier, resync, recovery, retention, the alert watch and the vSphere service get it instead of
the appliance. It sits below every part that uses it and imports none of them.
"""

from __future__ import annotations

from typing import Any

from ..policy import DEFAULT_POLICY, Policy
from .state import StateDB


class MachineState:
    """The machine rows of state.db, the event log and the policy lookup."""

    def __init__(self, db: StateDB) -> None:
        self.db = db

    def row(self, name: str) -> dict[str, Any]:
        """The machine's row (UnknownMachine when it is not registered)."""
        return self.db.machine(name)

    def rows(self) -> list[dict[str, Any]]:
        return self.db.machines()

    def revoke(self, name: str, by: str) -> None:
        self.db.revoke(name, by)

    def restore_access(self, name: str) -> None:
        self.db.restore_access(name)

    def add(self, name: str, cert_serial: int) -> None:
        """Register a machine (again after a revoke: the new certificate serial replaces the old one)."""
        self.db.add_machine(name, cert_serial)

    def update(self, name: str, **fields: Any) -> None:
        self.db.update_machine(name, **fields)

    def event(self, kind: str, machine: str | None, **data: Any) -> None:
        self.db.add_event(kind, machine, **data)

    def policy_of(self, name: str) -> Policy:
        """The policy the machine is protected under."""
        return self.db.policy(self.row(name)["policy"] or DEFAULT_POLICY)

    def policy(self, name: str) -> Policy:
        return self.db.policy(name)

    def policies(self) -> list[Policy]:
        return self.db.policies()

    def set_policy(self, policy: Policy) -> Policy:
        self.db.put_policy(policy)
        return policy
