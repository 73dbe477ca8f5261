"""``hpcnn doctor``: check every link of the chain and say which one is broken and how to fix it.

``base`` holds the result model and the runner, ``local`` this machine's links, ``remote`` the
cluster's (SSH, login shell, remote dir, scheduler, cluster python), ``probe`` a tiny job through
the job engine. Imports point one way: checks → base; the runner gets the check lists passed in.
"""
