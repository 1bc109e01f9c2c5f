"""Listening on the appliance's ports: a port taken is the operator's to fix, said with the setting to change."""

from __future__ import annotations

from typing import Any

from ..errors import ListenFailed


async def listening(what: str, host: str, port: int, start: Any) -> Any:
    """``await start(host, port)``; a port taken (or an address not on this machine) is the operator's to fix, so it
    is a ``ListenFailed`` naming the port and the setting, never a raw errno."""
    try:
        return await start(host, port)
    except OSError as exc:
        raise ListenFailed(f"cannot listen for the {what} port on {host}:{port}: {exc.strerror or exc}",
                           advice=f"Another program uses port {port} (or {host} is not an address of this machine): "
                                  f"stop it, or choose another {what} port (`lifeboat appliance init --{what}-port`, "
                                  "or the console's first-run wizard).", field=f"{what}_port") from None

