"""Torque (and Slurm's Torque wrappers): ``qsub``, one ``qstat -f ID...`` for every job, ``qdel``.

``qstat -f`` prints a block per job: ``Job Id: 179.host`` then ``key = value`` lines indented
by four spaces (a TAB in Slurm's wrapper), long values continuing on lines that start with a
TAB. Finished jobs show ``C`` with ``exit_status``; Slurm's wrapper shows ``C`` for every end
and no exit status, so there the job's own exit marker decides. Ids the server has forgotten
give ``qstat: Unknown Job Id ...`` on stderr, and exit 153 when no id was known: not a failure
of the whole call.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from hpcnn.schedulers.base import JobState
from hpcnn.schedulers.batch import PbsDialect, RawJob

_JOB_HEADER = re.compile(r"^Job Id:\s*(\S+)")
_ATTRIBUTE = re.compile(r"^[ \t]+([A-Za-z_][\w.]*) = ?(.*)$")


def parse_qstat_full(text: str) -> dict[str, dict[str, str]]:
    """``qstat -f`` text → {job id: {attribute: value}}; unknown lines are skipped.

    A continuation line (indented, no ``key = ``) is appended to the attribute above it.
    """
    return {job_id: attrs for job_id, attrs, _ in _records(text)}


def _records(text: str) -> list[tuple[str, dict[str, str], bool]]:
    """(job id, attributes, complete) per ``Job Id:`` block. qstat ends every block with a
    blank line; a block that the text ends inside (its last line perhaps cut short, as
    ``exit_status = -1`` of ``-11``) is not complete."""
    records: list[tuple[str, dict[str, str], bool]] = []
    current: dict[str, str] | None = None
    key = None
    for line in text.splitlines():
        header = _JOB_HEADER.match(line)
        if header:
            current, key = {}, None
            records.append((header.group(1), current, False))
            continue
        if current is None:
            continue
        if not line.strip():
            records[-1] = (*records[-1][:2], True)
            continue
        attribute = _ATTRIBUTE.match(line)
        if attribute:
            key = attribute.group(1)
            current[key] = attribute.group(2).rstrip()
        elif key is not None and line[0] in " \t":
            current[key] += line.strip()
    return records


class TorqueDialect(PbsDialect):
    name = "torque"
    max_job_name = 15
    """POSIX qsub and Torque 2.x take 15 characters; newer Torque takes more, but the shortest
    limit works everywhere (``Dialect.job_name`` keeps shortened names distinct)."""
    version_pattern = re.compile(r"^\s*version:\s*(\S+)", re.I | re.M)
    product = "Torque"
    active_states = {
        "Q": JobState.QUEUED,
        "W": JobState.QUEUED,  # waiting for its requested start time
        "T": JobState.QUEUED,  # being moved to another queue or server
        "H": JobState.HELD,
        "R": JobState.RUNNING,
        "E": JobState.RUNNING,  # exiting after having run: not an error
        "S": JobState.RUNNING,  # suspended after it started
    }
    finished_states = frozenset({"C"})
    # Torque-supplied exit codes (Torque Administrator Guide, "Job Exit Status"; pbs_job.h):
    walltime_codes = frozenset({-11})  # JOB_EXEC_OVERLIMIT_WT
    limit_codes = {-10: "JOB_EXEC_OVERLIMIT_MEM, over its memory limit"}

    def status_command(self, job_ids: Sequence[str]) -> list[str]:
        return ["qstat", "-f", *job_ids]

    def readable(self, stdout: str) -> bool:
        return bool(_records(stdout))

    def read_status(self, stdout: str) -> Mapping[str, RawJob]:
        return {
            job_id: RawJob(
                state=attrs.get("job_state", "").strip(),
                exit_status=attrs.get("exit_status"),
                used_walltime=attrs.get("resources_used.walltime"),
                walltime_limit=attrs.get("Resource_List.walltime"),
                comment=attrs.get("comment") or None,
                complete=complete,
            )
            for job_id, attrs, complete in _records(stdout)
        }


DIALECT = TorqueDialect
