"""``hpcnn init``: write cluster.yaml from questions or flags."""

from __future__ import annotations

import click

from hpcnn.cli.common import SchedulerChoice


@click.command("init")
@click.option("--path", "path", type=click.Path(dir_okay=False), default="cluster.yaml",
              show_default=True, help="Where to write the config.")
@click.option("--scheduler", type=SchedulerChoice(with_auto=True), help="Cluster scheduler.")
@click.option("--host", help="Login host or ~/.ssh/config alias (none: run jobs here).")
@click.option("--user", help="Cluster account name.")
@click.option("--port", type=int, help="SSH port.")
@click.option("--identity-file", help="SSH private key file.")
@click.option("--remote-dir", help="hpcnn's folder on the cluster (relative: under home).")
@click.option("--ssh", type=click.Choice(["fabric", "openssh"]), help="SSH client to use.")
@click.option("--queue", help="Queue/partition for training jobs.")
@click.option("--walltime", help="Walltime per job, e.g. 5:00:00 or 5h.")
@click.option("--cpus", type=int, help="CPU cores per job.")
@click.option("--gpus", type=int, help="GPUs per job.")
@click.option("--mem", help="Memory per job, e.g. 64gb.")
@click.option("--mail", "mail_address", help="E-mail for job notifications (at job end).")
@click.option("--setup", "setup", multiple=True,
              help="Environment setup line, e.g. 'conda activate nnunet' (repeatable).")
@click.option("--dataset", help="Dataset id or name to train.")
@click.option("--device", type=click.Choice(["cuda", "cpu", "mps"]),
              help="Device the local scheduler's jobs train on (default: cuda).")
@click.option("--force", is_flag=True, help="Overwrite an existing file.")
@click.option("--yes", "-y", "no_questions", is_flag=True,
              help="Ask nothing; use the flags and defaults.")
def init_cmd(path: str, force: bool, no_questions: bool, **answers: object) -> None:
    """Write a cluster.yaml describing your cluster (asks for what no flag gave).

    Every key is documented in cluster.yaml.example. An existing file is never overwritten
    without --force.
    """
    import sys

    from hpcnn.services.init_config import build_config, refuse_existing, write_config

    refuse_existing(path, force=force)  # before any question: no answers typed in vain
    interactive = not no_questions and sys.stdin.isatty()
    if interactive:
        _ask(answers)
    text = build_config(answers)
    target = write_config(path, text, force=force)
    click.echo(f"wrote {target}; next: hpcnn doctor --probe")


def _checked(key: str):  # noqa: ANN202 - click's value_proc
    """Reads an answer and checks it at once (click asks again on BadParameter)."""
    from hpcnn.services.init_config import check_answer

    def read(text: str) -> str:
        value = text.strip()
        problem = check_answer(key, value)
        if problem:
            raise click.BadParameter(problem)
        return value

    return read


def _ask(answers: dict[str, object]) -> None:
    """Prompt for the essentials a flag did not give, each checked as it is typed. The default
    scheduler is what ``-y`` writes: auto with a host, else this machine (local)."""
    if answers["scheduler"] is None:
        answers["scheduler"] = click.prompt(
            "Scheduler (local: run jobs on this machine)", type=SchedulerChoice(with_auto=True),
            default="auto" if answers.get("host") else "local")
    if answers["scheduler"] == "local":
        if answers.get("device") is None:
            answers["device"] = click.prompt(
                "Device to train on", type=click.Choice(["cuda", "cpu", "mps"]),
                default=_local_device())
    else:
        for key, question, default in [
            ("host", "Login host (or ~/.ssh/config alias)", None),
            ("user", "Cluster user name (empty: from ~/.ssh/config)", ""),
            ("remote_dir", "Folder for hpcnn on the cluster", "hpcnn"),
            ("queue", "Queue / partition for training", "gpu"),
            ("walltime", "Walltime per fold job", "5:00:00"),
            ("gpus", "GPUs per job", "1"),
            ("mem", "Memory per job", "32gb"),
        ]:
            if answers.get(key) in (None, ()):
                value = click.prompt(question, default=default, value_proc=_checked(key),
                                     show_default=default not in ("",))
                answers[key] = (int(value) if key == "gpus" else value) if value != "" else None
        if not answers.get("setup"):
            line = click.prompt("Environment setup line (e.g. 'conda activate nnunet', empty: "
                                "none)", default="", show_default=False)
            answers["setup"] = (line,) if line else ()
    if answers.get("dataset") is None:
        value = click.prompt("Dataset to train (id or name; empty: decide later)", default="",
                             show_default=False, value_proc=_checked("dataset"))
        answers["dataset"] = value or None


def _local_device() -> str:
    """The best device this machine's PyTorch sees (CPU without PyTorch)."""
    try:
        from hpcnn.nnunet.predict import resolve_device

        return resolve_device("auto")
    except ImportError:
        return "cpu"


COMMANDS = [init_cmd]
