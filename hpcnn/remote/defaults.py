"""Defaults of the SSH layer that the CLI shows before any connection exists: a module of its
own, importing nothing, so that ``hpcnn --help`` does not import the login machinery and no
transport imports the ``hpcnn.remote`` package (which imports the transports)."""

DEFAULT_PERSIST = "8h"
"""How long ``hpcnn login`` lasts by default: a working day (log in in the morning, cron syncs
until the evening)."""
