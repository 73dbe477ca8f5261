"""Connections to where jobs run: this machine, or a cluster over SSH."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from hpcnn.config import Config
    from hpcnn.remote.base import Connection


def connect(cfg: Config) -> Connection:
    """Open the one connection a command uses: local, Fabric (default) or the system OpenSSH."""
    if cfg.cluster.is_local:
        from hpcnn.remote.local import LocalConnection

        return LocalConnection()
    if cfg.cluster.ssh == "openssh":
        from hpcnn.remote.openssh import OpenSSHConnection

        return OpenSSHConnection(cfg.cluster)
    from hpcnn.remote.fabric_ssh import FabricConnection

    return FabricConnection(cfg.cluster)
