"""The command line as users meet it: `git bake` found on PATH, help with examples, exit codes."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest

from gitbake import __version__
from gitbake.cli.main import cli

from helpers import YODA, bake_git, invoke

COMMANDS = [
    ["init"],
    ["validate"],
    ["status"],
    ["target"],
    ["target", "ls"],
    ["target", "show"],
    ["store"],
    ["store", "fsck"],
    ["store", "gc"],
    ["store", "du"],
    ["remote"],
    ["remote", "add"],
    ["remote", "ls"],
    ["remote", "rm"],
    ["push"],
    ["pull"],
    ["run"],
    ["stim"],
    ["rollout"],
    ["hooks"],
    ["hooks", "install"],
    ["hooks", "uninstall"],
    ["hooks", "ls"],
    ["jobs"],
    ["jobs", "ls"],
    ["jobs", "wait"],
    ["jobs", "logs"],
    ["jobs", "cancel"],
    ["fetch"],
    ["checkout"],
    ["log"],
    ["tree"],
    ["show"],
    ["models"],
    ["eval"],
    ["chat"],
    ["serve"],
    ["export"],
    ["metrics"],
    ["diff"],
    ["completion"],
]


def test_version() -> None:
    result = invoke("--version")
    assert result.exit_code == 0 and __version__ in result.stdout


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_every_command_has_help_with_an_example(command: list[str]) -> None:
    for flag in ("-h", "--help"):
        result = invoke(*command, flag)
        assert result.exit_code == 0 and "Usage:" in result.stdout
    assert "Example" in invoke(*command, "-h").stdout


def test_every_registered_command_is_covered() -> None:
    import click

    def walk(group: click.Group, prefix: list[str]) -> list[list[str]]:
        # through click's lookup, not `.commands`: the top-level group loads its commands lazily
        ctx = click.Context(group)
        out = []
        for name in group.list_commands(ctx):
            cmd = group.get_command(ctx, name)
            out.append(prefix + [name])
            if isinstance(cmd, click.Group):
                out += walk(cmd, prefix + [name])
        return out

    registered = {
        " ".join(c)
        for c in walk(cli, [])
        if c not in (["target", "list"], ["remote", "list"], ["hook"], ["merge-driver"])
    }
    assert registered == {" ".join(c) for c in COMMANDS}


def test_unknown_command_and_option_exit_2() -> None:
    assert invoke("bogus").exit_code == 2
    assert invoke("status", "--bogus").exit_code == 2


def test_real_git_bake_external_command(tmp_path: Path) -> None:
    proc = subprocess.run(
        ["git", "bake", "init", "m", "--base-model", "tiny"], cwd=tmp_path, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    root = tmp_path / "m"
    (root / "input.yml").write_text(YODA)
    proc = bake_git(root, "status")
    assert proc.returncode == 0 and "yoda_bake_" in proc.stdout
    (root / "input.yml").write_text("BAKE:\n  name: b\n  epoch: 3\n")
    proc = bake_git(root, "validate")
    assert proc.returncode == 2 and "input.yml:3:3: BAKE.epoch: unknown field" in proc.stderr
    assert "did you mean `epochs`?" in proc.stderr
    proc = bake_git(tmp_path, "status")
    assert proc.returncode == 3


def test_python_dash_m(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "gitbake", "--version"], capture_output=True, text=True)
    assert proc.returncode == 0 and __version__ in proc.stdout


BAD_INPUTS = {
    "unclosed quote": 'PROMPT:\n  teacher:\n    messages:\n      - {role: system, content: "open}\n',
    "tab indentation": "BAKE:\n\tname: b\n",
    "top level list": "- BAKE\n",
    "unknown section": "BAEK:\n  name: b\n",
    "unknown field": "BAKE:\n  name: b\n  epoch: 1\n",
    "wrong type": "BAKE:\n  name: b\n  epochs: three\n",
    "temperature 5": "TARGET:\n  generators: [{type: hardcoded, questions: [q]}]\n  temperature: 5\n",
    "r 0": "BAKE:\n  model: {baked_adapter_config: {r: 0}}\n",
    "negative lr": "BAKE:\n  optimizer: {learning_rate: -1}\n",
    "numq 0": "TARGET:\n  generators: [{type: oneshot_qs, numq: 0}]\n",
    "unknown dataset target": "BAKE:\n  name: b\n  datasets: [{target: nowhere}]\n",
    "unknown generator": "TARGET:\n  generators: [{type: magic}]\n",
    "template outside": "PROMPT: {teacher: {}}\nTARGET:\n  generators: [{type: oneshot_qs, numq: 1, template_path: "
    "../x.txt}]\n",
    "missing template": "PROMPT: {teacher: {}}\nTARGET:\n  generators: [{type: oneshot_qs, numq: 1, template_path: "
    "t.txt}]\n",
    "from_file outside": "PROMPT: {teacher: {}}\nTARGET:\n  generators: [{type: from_file, path: /etc/passwd}]\n",
    "duplicate keys": "BAKE:\n  name: a\n  name: b\n",
    "binary": b"BAKE:\x00\x01\n",
    "20 MB": "BAKE:\n  name: b\n" + "#" * (20 * 1024 * 1024) + "\n",
}


@pytest.mark.parametrize("name", list(BAD_INPUTS))
def test_bad_input_exit_2_located_and_nothing_changes(name: str, model_repo: Path) -> None:
    content = BAD_INPUTS[name]
    path = model_repo / "input.yml"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    before = {p.name: p.read_bytes() for p in model_repo.iterdir() if p.is_file()}
    for command in ("validate", "status"):
        result = invoke(command)
        assert result.exit_code == 2, (command, result.output)
        assert "input.yml" in result.stderr
        if name not in ("20 MB",):
            assert re.search(r"input\.yml:\d+", result.stderr), result.stderr
    assert {p.name: p.read_bytes() for p in model_repo.iterdir() if p.is_file()} == before


@pytest.mark.parametrize(
    "args",
    [["status"], ["validate"], ["store", "du"], ["jobs", "ls"], ["jobs", "cancel"], ["fetch"], ["log"], ["show"]],
    ids=" ".join,
)
def test_the_repository_is_opened_once_per_invocation(
    args: list[str], model_repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from gitbake.repo import repo as repo_mod

    opened: list[Path] = []
    real = repo_mod.open_repo

    def counting(cwd: Path) -> repo_mod.ModelRepo:
        opened.append(cwd)
        return real(cwd)

    monkeypatch.setattr(repo_mod, "open_repo", counting)
    assert invoke(*args).exit_code == 0
    assert len(opened) == 1


def test_core_decisions_of_the_cli_are_typed_core_functions(model_repo: Path) -> None:
    """The decisions `cancel`, `fetch`, `push`/`pull` and `metrics` make live below the CLI and answer with
    dataclasses; here, with nothing running, waiting or baked."""
    from gitbake.repo.repo import open_repo
    from gitbake.use.metrics import BakeMetrics, LossStats
    from gitbake.workflow import jobs, run, transfer

    repo = open_repo(model_repo)
    assert jobs.cancel_job(repo) is None
    assert run.fetch(repo) == run.Fetched("nothing")
    assert run.fetch(repo, drop=True).state == "nothing"
    # a first argument that names a revision and no remote is a revision; a path or URL is a remote
    assert transfer.remote_and_revs(model_repo, "HEAD", ("main",)) == (None, ("HEAD", "main"))
    assert transfer.remote_and_revs(model_repo, "./elsewhere", ()) == ("./elsewhere", ())
    assert transfer.remote_and_revs(model_repo, "nonesuch", ()) == ("nonesuch", ())
    m = BakeMetrics("b", "c", [{"loss": 2.0}, {"loss": float("nan")}, {"loss": 1.0}, {"step": 4}])
    stats = m.loss_stats()
    assert stats is not None and (stats.first, stats.min) == (2.0, 1.0) and math.isnan(stats.last)
    assert [x for x in m.losses() if not math.isnan(x)] == [2.0, 1.0, 0.0]  # the chart draws a missing loss as 0
    s = BakeMetrics("b", "c", [{"loss": 2.0}, {"loss": 0.5}, {"loss": 1.0}]).loss_stats()
    assert s == LossStats(2.0, 1.0, 0.5)
    assert BakeMetrics("b", "c", [{"loss": float("inf")}]).loss_stats() is None


def test_no_color_turns_colour_off(model_repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from click.testing import CliRunner

    monkeypatch.delenv("NO_COLOR", raising=False)
    coloured = CliRunner().invoke(cli, ["show", "nope"], color=True)
    assert coloured.exit_code == 2 and "\x1b[" in coloured.stderr  # a terminal gets a red "error:"
    plain = CliRunner().invoke(cli, ["show", "nope"], color=True, env={"NO_COLOR": "1"})
    assert plain.exit_code == 2 and "\x1b[" not in plain.stderr and plain.stderr.startswith("error: ")


def test_a_closed_pipe_ends_quietly(model_repo: Path) -> None:
    """`git bake ... | head`: the reader leaves first; git bake says nothing and exits 0."""
    proc = subprocess.Popen(
        ["git", "bake", "completion", "bash"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=model_repo
    )
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # before the program (still starting) writes a byte
    err = proc.stderr.read().decode()
    assert proc.wait() == 0 and err == ""


def test_jobs_json_without_a_subcommand(model_repo: Path) -> None:
    out = bake_git(model_repo, "jobs", "--json")
    assert out.returncode == 0 and json.loads(out.stdout) == [], out.stderr
    misplaced = bake_git(model_repo, "jobs", "--json", "ls")
    assert misplaced.returncode == 2 and "put --json after the subcommand" in misplaced.stderr
