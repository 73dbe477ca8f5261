"""An experiment as a graph of jobs: nodes with their own resources, and what each waits for.

Nodes: the preprocessing job (when the cluster preprocesses), one fold CHAIN per configuration
and fold (attempt 1 and its walltime continuations, each ``afterany`` the one before: the chain
is expanded into attempts by hpcnn.jobs.plan), and find_best_configuration once every fold of
every configuration is complete. An edge ``Need(node, afterok)`` on a fold chain means "after
the LAST attempt of that chain ended with exit 0": the last attempt exits 0 exactly when the
fold is complete (a continuation of a complete fold exits 0 at once; one after a failure exits
``SKIPPED_EXIT``).

What ``afterok`` means per dialect:
- Slurm (``--dependency=afterok:ID``) and Torque/PBS (``-W depend=afterok:ID``): the job starts
  only after ID exited 0; otherwise Slurm keeps it pending with ``DependencyNeverSatisfied``
  and PBS deletes or holds it. The local queue cancels it.
- Grid Engine has no afterok: ``-hold_jid ID`` starts the job once ID ENDED, however. The
  dependent's first command (``hpcnn.jobs.model.NEEDS_GUARD``) reads the needed jobs' exit
  markers and stops at once with ``BLOCKED_EXIT`` when one did not complete, naming it.
``afterany`` (a continuation on the attempt before it) is the same word in every dialect but
Grid Engine's, where ``-hold_jid`` is exactly afterany.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hpcnn.config import Config, ResourcesSection
from hpcnn.jobs.experiment import Experiment, ordered
from hpcnn.jobs.model import FIND_BEST, FOLD, PREP, Run
from hpcnn.jobs.resources import cpu_resources, fold_resources
from hpcnn.nnunet.commands import CASCADE, LOWRES

AFTEROK, AFTERANY = "afterok", "afterany"


@dataclass(frozen=True)
class Need:
    """Wait for ``node``: for a fold chain, for the last attempt of that chain."""

    node: str
    kind: str = AFTEROK


@dataclass(frozen=True)
class Node:
    key: str
    """``prep``, ``<configuration>/f<fold>``, ``find_best``."""
    kind: str
    owner: str
    """The registry's run key of its jobs: the run's id for folds, the experiment's for the
    preprocessing and find_best jobs (equal when one configuration trains)."""
    run: Run
    """The fold's run; for prep and find_best the experiment's first (dataset, trainer, plans)."""
    resources: ResourcesSection
    fold: int | None = None
    needs: tuple[Need, ...] = ()

    @property
    def configuration(self) -> str:
        return self.run.configuration

    def label(self, several: bool) -> str:
        """How messages name it: ``fold 2`` (one configuration), ``3d_lowres fold 2``."""
        if self.kind == FOLD:
            return f"{self.configuration} fold {self.fold}" if several else f"fold {self.fold}"
        return {PREP: "preprocessing", FIND_BEST: "find_best_configuration"}.get(self.kind,
                                                                                  self.kind)


def fold_key(configuration: str, fold: int) -> str:
    return f"{configuration}/f{fold}"


@dataclass
class Graph:
    experiment: Experiment
    nodes: dict[str, Node] = field(default_factory=dict)
    """In topological order (every node after the nodes it needs)."""

    def add(self, node: Node) -> None:
        missing = [n.node for n in node.needs if n.node not in self.nodes]
        if missing:  # a node is added only after what it needs: the order stays topological
            raise ValueError(f"{node.key} needs {missing}, not in the graph yet")
        self.nodes[node.key] = node

    @property
    def owners(self) -> list[str]:
        return list(dict.fromkeys(n.owner for n in self.nodes.values()))

    @property
    def several(self) -> bool:
        return len(self.experiment.configurations) > 1

    def folds(self) -> list[Node]:
        return [n for n in self.nodes.values() if n.kind == FOLD]

    def dependents(self, key: str) -> list[Node]:
        return [n for n in self.nodes.values() if any(need.node == key for need in n.needs)]


def build_graph(cfg: Config, experiment: Experiment, *, remote_prep: bool,
                find_best: bool) -> Graph:
    """The experiment's whole graph. ``find_best``: add find_best_configuration after every
    fold (only with more than one configuration: with one there is nothing to choose)."""
    graph = Graph(experiment)
    first = experiment.runs[0]
    prep: tuple[Need, ...] = ()
    if remote_prep:
        graph.add(Node(PREP, PREP, experiment.id, first, cpu_resources(cfg, PREP)))
        prep = (Need(PREP),)
    for run in (experiment.run(c) for c in ordered(experiment.configurations)):
        resources = fold_resources(cfg, run.configuration)
        needs = prep
        if run.configuration == CASCADE:
            needs = prep + tuple(Need(fold_key(LOWRES, f)) for f in experiment.folds)
        for fold in experiment.folds:
            graph.add(Node(fold_key(run.configuration, fold), FOLD, run.id, run, resources,
                           fold, needs))
    if find_best and len(experiment.configurations) > 1:
        graph.add(Node(FIND_BEST, FIND_BEST, experiment.id, first,
                       cpu_resources(cfg, FIND_BEST), None,
                       tuple(Need(n.key) for n in graph.folds())))
    return graph
