"""Connections to where jobs run: this machine, or a cluster over SSH."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from hpcnn.config import Config
    from hpcnn.remote.base import Connection



def connect(cfg: Config) -> Connection:
    """Open the one connection a command uses: local, Fabric (default) or the system OpenSSH.

    While ``hpcnn login`` holds a connection to the cluster, it is the system OpenSSH's
    whatever ``cluster.ssh`` says (paramiko cannot share an ssh master), and every command
    rides it: that is what lets cron reach a cluster that asks for a one-time code.
    """
    if cfg.cluster.is_local:
        from hpcnn.remote.local import LocalConnection

        return LocalConnection()
    from hpcnn.remote.login_master import has_logins

    if cfg.cluster.ssh == "openssh" or has_logins():
        from hpcnn.remote.openssh import OpenSSHConnection

        conn = OpenSSHConnection(cfg.cluster)
        if cfg.cluster.ssh == "openssh" or conn.rides_login:
            return conn
        conn.close()
    from hpcnn.remote.fabric_ssh import FabricConnection

    return FabricConnection(cfg.cluster)
