"""The one local file that maps a DICOM import's case names back to the patient's data:
``<workspace>/.hpcnn/dicom/DatasetNNN_Name.csv`` (folder 0700, file 0600), one row per image
series and label object: case id, role, source folder, PatientID, Study/Series/SOP Instance
UIDs, and the flags ``dataset check`` reports (burned-in annotation, secondary capture).

Nothing of it goes into nnUNet_raw, the logs or the registry: the cluster only ever sees
voxels, geometry and hpcnn's case ids.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from hpcnn.fsutil import atomic_write_text, ensure_dir

COLUMNS = ("case_id", "role", "source", "patient_id", "study_uid", "series_uid", "sop_uids",
           "burned_in_annotation", "secondary_capture")


@dataclass(frozen=True)
class Row:
    case_id: str
    role: str  # image (channel 0), "image 0001" (channel 1) ..., label
    source: str
    patient_id: str
    study_uid: str
    series_uid: str
    sop_uids: tuple[str, ...]
    burned_in: bool = False
    secondary_capture: bool = False


def path_for(state_dir: Path, dataset_folder: str) -> Path:
    return state_dir / "dicom" / f"{dataset_folder}.csv"


def write(path: Path, rows: Sequence[Row]) -> None:
    """Write the mapping whole (temp + rename), private to the user."""
    ensure_dir(path.parent)
    path.parent.chmod(0o700)
    buf = io.StringIO()
    out = csv.writer(buf, lineterminator="\n")
    out.writerow(COLUMNS)
    for r in rows:
        out.writerow([r.case_id, r.role, r.source, r.patient_id, r.study_uid, r.series_uid,
                      " ".join(r.sop_uids), "YES" if r.burned_in else "",
                      "YES" if r.secondary_capture else ""])
    atomic_write_text(path, buf.getvalue(), mode=0o600)


def read(path: Path) -> list[Row]:
    """The rows of a mapping file ([] when there is none: not a DICOM import)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    return [Row(r["case_id"], r["role"], r["source"], r["patient_id"], r["study_uid"],
                r["series_uid"], tuple(r["sop_uids"].split()),
                r["burned_in_annotation"] == "YES", r["secondary_capture"] == "YES")
            for r in csv.DictReader(text.splitlines())]
