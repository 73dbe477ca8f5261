"""PBS Pro / OpenPBS: ``qsub``, ``qstat -f -F json -x`` per job in one remote call, ``qdel``.

``-x`` keeps finished jobs (state ``F``, array subjobs ``X``) with their ``Exit_status``; without
it a finished job is an error ("Job has finished, use -x or -H", exit 35). The JSON document
is ``{"timestamp", "pbs_version", "pbs_server", "Jobs": {id: {attributes}}}``, with no "Jobs"
key when nothing matched. The status call runs qstat once per id inside one shell line: some
releases return only the first of several ids in JSON (OpenPBS issue 2672) or glued several
documents together (PP-1240), so one document per id is right everywhere, still in one round
trip. Invalid JSON (unescaped ``BASH_FUNC_*`` values from ``qsub -V``, OpenPBS issue 2541;
values such as ``005`` written as numbers, issue 1255) is read tolerantly: the few attributes
hpcnn needs are found in the text when the document does not parse.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from hpcnn.schedulers.base import JobState
from hpcnn.schedulers.batch import PbsDialect, RawJob

# One qstat per id; the loop keeps a failing exit status so the caller can see it.
_LOOP = 'rc=0; for j do qstat -f -F json -x "$j" || rc=$?; done; exit $rc'
_JOB_KEY = re.compile(r'"(\d+(?:\[\d*\])?(?:\.[^"\s]*)?)"\s*:\s*\{')


def _documents(text: str) -> Iterator[tuple[str, bool]]:
    """The top-level ``{...}`` documents in the output, by brace depth outside strings, each
    with whether it ended; an unterminated one (cut off, or unbalanced quotes in a broken
    value) is yielded as it stands."""
    depth, start, in_string, escaped = 0, 0, False, False
    for i, ch in enumerate(text):
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch == "{":
            start = i if depth == 0 else start
            depth += 1
        elif ch == "}" and depth:
            depth -= 1
            if depth == 0:
                yield text[start : i + 1], True
    if depth:
        yield text[start:], False


def _salvage(doc: str) -> dict[str, dict[str, Any]]:
    """Job attributes from a document ``json`` cannot read.

    Each job object starts with its id as key; the attributes hpcnn needs are simple
    ``"key": value`` pairs, which the broken parts (environment variables) do not imitate.
    """
    found: dict[str, dict[str, Any]] = {}
    starts = list(_JOB_KEY.finditer(doc))
    for n, match in enumerate(starts):
        body = doc[match.end() : starts[n + 1].start() if n + 1 < len(starts) else len(doc)]
        attrs: dict[str, Any] = {}
        for key in ("job_state", "Exit_status", "comment"):
            value = re.search(rf'"{key}"\s*:\s*("(?:[^"\\]|\\.)*"|-?\d+)', body)
            if value:
                attrs[key] = value.group(1).strip('"')
        for group in ("resources_used", "Resource_List"):
            value = re.search(rf'"{group}"\s*:\s*\{{[^{{}}]*?"walltime"\s*:\s*"([^"]*)"', body)
            if value:
                attrs[group] = {"walltime": value.group(1)}
        if "job_state" in attrs:
            found[match.group(1)] = attrs
    return found


def parse_qstat_json(text: str, *, salvage: bool = True) -> dict[str, dict[str, Any]]:
    """{job id: attributes} from one or more ``qstat -f -F json`` documents; ``salvage=False``
    reads only what ``json`` reads (the tests prove the parser apart from the salvage)."""
    return {job_id: attrs for job_id, attrs, _ in _read_json(text, salvage=salvage)[0]}


def _read_json(text: str, *, salvage: bool = True
               ) -> tuple[list[tuple[str, dict[str, Any], bool]], bool]:
    """((job id, attributes, complete) per job, whether any document was PBS's qstat answer).
    A job read from a document that never ended is not complete: its last value may be cut."""
    jobs: list[tuple[str, dict[str, Any], bool]] = []
    understood = False
    for doc, ended in _documents(text):
        try:
            data = json.loads(doc, strict=False)  # strict=False: raw control characters
        except json.JSONDecodeError:
            rescued = _salvage(doc) if salvage else {}
            understood = understood or bool(rescued)
            jobs += [(job_id, attrs, ended) for job_id, attrs in rescued.items()]
            continue
        if not isinstance(data, dict) or not {"pbs_version", "Jobs"} & data.keys():
            continue
        understood = True
        if isinstance(data.get("Jobs"), dict):
            jobs += [(k, v, True) for k, v in data["Jobs"].items() if isinstance(v, dict)]
    return jobs, understood


def _text(value: Any) -> str | None:
    return None if value is None or value == "" else str(value)


def _walltime(attrs: Mapping[str, Any], group: str) -> str | None:
    value = attrs.get(group)
    return _text(value.get("walltime")) if isinstance(value, dict) else None


class PbsProDialect(PbsDialect):
    name = "pbspro"
    max_job_name = 230
    """PBS_MAXJOBNAME: 236 in PBS Pro 18, 230 in OpenPBS 20+ (pbs_ifl.h); 230 fits both."""
    version_pattern = re.compile(r"pbs_version\s*=\s*(\S+)")
    product = "PBS Pro"
    active_states = {
        "Q": JobState.QUEUED,
        "W": JobState.QUEUED,  # waiting for its start time or a stage-in
        "T": JobState.QUEUED,  # in transit to another server
        "M": JobState.QUEUED,  # moved to another server, still known there
        "H": JobState.HELD,
        "R": JobState.RUNNING,
        "E": JobState.RUNNING,  # exiting after having run: not an error
        "B": JobState.RUNNING,  # an array whose subjobs have begun
        "S": JobState.RUNNING,  # suspended after it started
        "U": JobState.RUNNING,  # suspended while the workstation is busy
    }
    finished_states = frozenset({"F", "X"})
    # PBS Professional Administrator's Guide, "Job Exit Status Codes" (job.h):
    walltime_codes = frozenset({-29})  # JOB_EXEC_KILL_WALLTIME
    limit_codes = {
        -26: "JOB_EXEC_KILL_VMEM, over its virtual memory limit",
        -27: "JOB_EXEC_KILL_MEM, over its memory limit",
    }

    def status_command(self, job_ids: Sequence[str]) -> list[str]:
        return ["sh", "-c", _LOOP, "sh", *job_ids]

    def readable(self, stdout: str) -> bool:
        return _read_json(stdout)[1]

    def read_status(self, stdout: str) -> Mapping[str, RawJob]:
        return {
            job_id: RawJob(
                state=str(attrs.get("job_state", "")).strip(),
                exit_status=_text(attrs.get("Exit_status")),
                used_walltime=_walltime(attrs, "resources_used"),
                walltime_limit=_walltime(attrs, "Resource_List"),
                comment=_text(attrs.get("comment")),
                complete=complete,
            )
            for job_id, attrs, complete in _read_json(stdout)[0]
        }


DIALECT = PbsProDialect
