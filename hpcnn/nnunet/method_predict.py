"""Predicting with what find-best chose: one configuration, an ensemble of two, or the cascade,
then nnU-Net's postprocessing, as nnU-Net's own inference instructions do it.

- An ensemble predicts each member with its probabilities (``--save_probabilities``), averages
  them with nnU-Net's ``ensemble_folders`` (what ``nnUNetv2_ensemble`` runs), and applies the
  chosen postprocessing with ``apply_postprocessing_to_folder`` (``nnUNetv2_apply_postprocessing``).
- ``3d_cascade_fullres`` predicts its previous stage (``3d_lowres``) first and reads it as
  ``-prev_stage_predictions``.
- ``--configuration`` forces one configuration (or, repeated, an ensemble of those); the
  postprocessing is used only when it was chosen for exactly that model.

The inputs, the device and the delivery of results under the images' own names are those of a
single-model prediction (predict.py), so every prediction looks the same to the user.
``postprocessing.pkl`` is a pickle that may come from a model zip: it is loaded with only
nnU-Net's postprocessing functions and plain data allowed, never arbitrary code.
"""

from __future__ import annotations

import pickle
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hpcnn.errors import DataError
from hpcnn.nnunet.choice import CHOICE, Choice, read_choice, version_problem
from hpcnn.nnunet.commands import CASCADE
from hpcnn.nnunet.inputs import case_id, stage
from hpcnn.nnunet.model_folder import (
    ModelFolder,
    choose_folds,
    local_nnunetv2_version,
    open_model,
)
from hpcnn.nnunet.predict import (
    Echo,
    Prediction,
    _run_predictor,
    check_request,
    cpu_cost,
    deliver,
    dicom_codes,
    resolve_device,
    result_folder,
    version_warnings,
)

PP_MODULE = "nnunetv2.postprocessing.remove_connected_components"
PP_FUNCTIONS = ("remove_all_but_largest_component_from_segmentation",)
"""What nnU-Net's determine_postprocessing puts in postprocessing.pkl (pure array functions)."""
NUMPY_MODULES = ("numpy", "numpy.core.multiarray", "numpy._core.multiarray")
MAX_PKL_BYTES = 2**20


@dataclass(frozen=True)
class Method:
    """What to predict with: the models (one, or the members of an ensemble) and the
    postprocessing chosen for exactly them."""

    results: Path  # nnUNet_results/DatasetNNN_Name
    trainer: str
    plans: str
    members: tuple[str, ...]
    postprocessing: Path | None
    choice: Choice | None

    def folder(self, configuration: str) -> Path:
        return self.results / f"{self.trainer}__{self.plans}__{configuration}"

    def describe(self) -> str:
        what = (f"ensemble of {' + '.join(self.members)}" if len(self.members) > 1
                else self.members[0])
        return f"{what} ({self.trainer}, {self.plans})"


def method_for(model_dir: Path, configurations: Sequence[str] = ()) -> Method | None:
    """The method to predict with from ``model_dir`` (a ``Trainer__Plans__config`` folder, or
    a ``DatasetNNN_Name`` results folder holding hpcnn_choice.json) and ``--configuration``;
    None: predict with ``model_dir`` alone, as before there was a choice."""
    if (model_dir / CHOICE).is_file():
        results, choice = model_dir, read_choice(model_dir)
        assert choice is not None
        trainer, plans = choice.trainer, choice.plans
    else:
        parts = model_dir.name.split("__")
        if len(parts) != 3:
            if configurations:
                raise DataError(f"{model_dir}: --configuration needs a model folder "
                                "(Trainer__Plans__config) or a results folder with a choice")
            return None
        trainer, plans, _ = parts
        results = model_dir.parent
        choice = read_choice(results) if (results / CHOICE).is_file() else None
        if choice is not None and (choice.trainer, choice.plans) != (trainer, plans):
            choice = None  # chosen among other models
        if choice is None and not configurations:
            return None
    if configurations:
        members = tuple(dict.fromkeys(configurations))
    elif choice is not None:
        members = tuple(choice.members)
    else:
        return None
    pp = None
    if choice is not None and tuple(choice.members) == members and choice.postprocessing:
        pp = results / choice.postprocessing
    return Method(results, trainer, plans, members, pp, choice)


METHOD_FILE = re.compile(rf"{re.escape(CHOICE)}|ensembles/ensemble___[^/]+/"
                         r"(postprocessing\.pkl|plans\.json|dataset\.json)")
"""Files of the method outside the model folders that a model zip carries (relative to its
DatasetNNN_Name folder): the choice, and an ensemble's postprocessing."""


@dataclass(frozen=True)
class MethodFiles:
    """What a model zip of a chosen method holds besides nnU-Net's model folders."""

    models: list[Path]  # every configuration compared
    extras: list[str]  # relative to the DatasetNNN_Name folder


def method_files(results: Path) -> MethodFiles | None:
    """The model folders and extra files of the choice recorded in ``results`` (None: not a
    results folder with a choice)."""
    choice = read_choice(results) if (results / CHOICE).is_file() else None
    if choice is None:
        return None
    prefix = f"{choice.trainer}__{choice.plans}__"
    models = [results / f"{prefix}{c}" for c in _compared(choice)]
    extras = [CHOICE]
    if choice.postprocessing:
        folder = Path(choice.postprocessing).parent
        extras += [(folder / n).as_posix() for n in ("postprocessing.pkl", "plans.json",
                                                      "dataset.json")
                   if (results / folder / n).is_file()]
    return MethodFiles(models, extras)


def _compared(choice: Choice) -> list[str]:
    """The configurations find-best compared (the candidates that are not ensembles)."""
    found = [name.rsplit("__", 1)[-1] for name in choice.candidates
             if not name.startswith("ensemble___")]
    return found or list(choice.members)


def check_method_files(zip_name: str, dataset_dir: Path) -> list[str]:
    """A model zip's choice and postprocessing, extracted under ``dataset_dir``: the choice
    must be hpcnn's, its postprocessing nnU-Net's (restricted unpickling); returns notes."""
    for pkl in dataset_dir.rglob("postprocessing.pkl"):
        load_postprocessing(pkl)  # any of them, chosen or not: none may run code
    choice = read_choice(dataset_dir)
    if choice is None:
        return []
    notes = [f"{zip_name}: chosen by find-best: {choice.describe()}"]
    if choice.postprocessing and not (dataset_dir / choice.postprocessing).is_file():
        notes.append(f"{zip_name}: holds no postprocessing file ({choice.postprocessing}): "
                     "predictions will be made without nnU-Net's postprocessing")
    return notes


def load_postprocessing(path: Path) -> tuple[list[Any], list[dict[str, Any]]]:
    """``postprocessing.pkl``'s functions and their arguments, unpickled with nothing but
    nnU-Net's postprocessing functions and numpy scalars allowed."""
    import io

    class Restricted(pickle.Unpickler):
        def find_class(self, module: str, name: str) -> Any:
            allowed = (module == PP_MODULE and name in PP_FUNCTIONS
                       or module in NUMPY_MODULES and name in ("scalar", "dtype")
                       or module == "numpy.dtypes" and name.endswith("DType"))
            if allowed:  # pure functions, and numpy ints in their arguments
                return super().find_class(module, name)
            raise pickle.UnpicklingError(f"{module}.{name} is not allowed")

    try:
        if path.stat().st_size > MAX_PKL_BYTES:
            raise DataError(f"{path}: larger than {MAX_PKL_BYTES // 1024} kB; not nnU-Net's "
                            "postprocessing")
        fns, kwargs = Restricted(io.BytesIO(path.read_bytes())).load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, OSError) as exc:
        raise DataError(f"{path}: not nnU-Net's postprocessing ({exc})",
                        hint="run `hpcnn find-best` again, or predict without it") from exc
    if not (isinstance(fns, list) and isinstance(kwargs, list) and len(fns) == len(kwargs)
            and all(isinstance(k, dict) for k in kwargs)):
        raise DataError(f"{path}: not nnU-Net's postprocessing (functions and arguments)")
    return fns, kwargs


def predict_method(method: Method, inputs: Sequence[str], output: Path,
                   folds: Sequence[str] | None = None, device: str = "auto",
                   fast: bool = False, fmt: str | None = None, echo: Echo = print, *,
                   force: bool = False, max_gib: float | None = None,
                   labels_file: Path | None = None) -> Prediction:
    """Predict ``inputs`` into ``output`` with ``method`` (see the module's docstring);
    ``force``, ``max_gib`` and ``labels_file`` as for a single model's predict()."""
    from hpcnn.nnunet.checkpoint import check_folds

    start = time.perf_counter()
    ensemble = len(method.members) > 1
    stages = {c: _stages(method, c) for c in method.members}
    cascade = any(len(s) > 1 for s in stages.values())
    for what, needed in (("an ensemble", ensemble), ("the cascade", cascade)):
        problem = version_problem(local_nnunetv2_version(), what) if needed else None
        if problem:
            raise DataError(problem, hint="pip install 'nnunetv2>=2.7'")
    models = {c: open_model(method.folder(c)) for s in stages.values() for c in s}
    if folds is None and method.choice is not None:  # those find-best cross-validated
        folds = [str(f) for f in method.choice.folds]
    chosen = {c: choose_folds(m, folds) for c, m in models.items()}
    for configuration, model in models.items():  # nnU-Net's loader would run a pickle's code
        check_folds(model, chosen[configuration])
    echo(f"predicting with {method.describe()}"
         + (f", chosen by find-best: {method.choice.describe()}" if method.choice else ""))
    for configuration, model in models.items():
        missing = model.describe_missing()
        echo(f"  {configuration}: fold(s) {', '.join(chosen[configuration])}"
             + (f" ({missing})" if missing else ""))
        for line in version_warnings(model, chosen[configuration]):
            echo(f"warning: {line}")
    if method.postprocessing is not None and not method.postprocessing.is_file():
        echo(f"warning: {method.postprocessing} is missing (a model zip without "
             "postprocessing?): predicting without nnU-Net's postprocessing")
        pp = None
    else:
        pp = load_postprocessing(method.postprocessing) if method.postprocessing else None
    if pp is None and method.choice is not None and method.postprocessing is None:
        chosen_for = tuple(method.choice.members)
        echo("no postprocessing (" + ("find-best chose none" if chosen_for == method.members
                                      else f"find-best chose it for {' + '.join(chosen_for)}")
             + ")")
    first = models[method.members[0]]
    codes = dicom_codes(fmt, labels_file)
    cases, results = check_request(first, inputs, output, fmt, echo, force=force,
                                   max_gib=max_gib)
    torch_device = resolve_device(device)
    if torch_device == "cpu":
        echo(cpu_cost(first, cases, sum(len(f) for f in chosen.values()), fast))
    ids = [case_id(i) for i in range(len(cases))]
    with result_folder(output) as work:
        lists = stage(cases, work / "input", first.file_ending)
        member_outputs = []
        for configuration in method.members:
            previous = None
            for step in stages[configuration]:
                folder = work / step
                _run_predictor(models[step], chosen[step], torch_device, fast, lists,
                               [folder / i for i in ids],
                               probabilities=ensemble and step == configuration,
                               previous_stage=previous)
                previous = folder
            member_outputs.append(work / configuration)
        final = member_outputs[0]
        processes = max(1, min(3, len(cases)))
        if ensemble:
            from nnunetv2.ensembling.ensemble import ensemble_folders

            final = work / "ensemble"
            ensemble_folders([str(f) for f in member_outputs], str(final),
                             num_processes=processes)
        if pp is not None:
            from nnunetv2.postprocessing.remove_connected_components import (
                apply_postprocessing_to_folder,
            )

            source = final
            final = work / "postprocessed"
            apply_postprocessing_to_folder(
                str(source), str(final), pp[0], pp[1],
                plans_file_or_dict=_plans_beside(method.postprocessing, models[method.members[0]]),
                num_processes=processes)
        deliver(output, first, chosen[method.members[0]], fast, cases, [final / i for i in ids],
                results, fmt, echo, force=force, codes=codes, source={"method": {
                    "members": list(method.members), "trainer": method.trainer,
                    "plans": method.plans, "folds": chosen,
                    "postprocessing": str(method.postprocessing) if pp is not None else None,
                    "choice": method.choice.winner if method.choice else None}})
    return Prediction(results, chosen[method.members[0]], torch_device,
                      time.perf_counter() - start)


def _plans_beside(pkl: Path | None, model: ModelFolder) -> str:
    """The plans nnU-Net's instructions name for the postprocessing: those beside its file
    (find-best copies them there), else the first member's."""
    beside = pkl.parent / "plans.json" if pkl is not None else None
    return str(beside if beside is not None and beside.is_file() else model.path / "plans.json")


def _stages(method: Method, configuration: str) -> list[str]:
    """The configurations predicted in order for ``configuration``: the cascade's previous
    stage (3d_lowres, from its plans) first."""
    if configuration != CASCADE:
        return [configuration]
    model: ModelFolder = open_model(method.folder(configuration))
    from hpcnn.nnunet.plans import read_plans

    previous = read_plans(model.path / "plans.json").configuration(configuration).get(
        "previous_stage")
    if not previous:
        raise DataError(f"{model.path}/plans.json: {CASCADE} names no previous_stage")
    return [str(previous), configuration]
