"""`git bake completion bash|zsh`: the shell completion script, for `git bake <TAB>` and `git-bake <TAB>`.

click completes a program through an environment variable named after it; for "git bake" its default
name would hold a space, so `main` names it `_GIT_BAKE_COMPLETE`. The script is click's own for the
`git-bake` program, plus the function git's completion calls for an external command: in bash, git's
completion runs `_git_bake` for `git bake ...` (with `words`/`cword` of the whole `git` line); in zsh,
git's `_git` runs `_git-bake`. Each hands click the line as if `git-bake` had been typed.
"""

from __future__ import annotations

import click

from gitbake.cli.common import CONTEXT

PROG, VAR = "git-bake", "_GIT_BAKE_COMPLETE"

BASH_GIT = r"""
# `git bake <TAB>`: git's bash completion calls _git_bake, with `words` the whole line (from `git`) and
# `__git_cmd_idx` the index of `bake` in it (git options such as -C DIR may come before it)
_git_bake() {
    local IFS=$'\n'
    local idx=${__git_cmd_idx:-1}
    local response completion type value
    response=$(env COMP_WORDS="git-bake ${words[*]:idx+1}" COMP_CWORD=$((cword - idx)) \
        _GIT_BAKE_COMPLETE=bash_complete git-bake 2>/dev/null)
    for completion in $response; do
        IFS=',' read -r type value <<< "$completion"
        if [[ $type == 'dir' ]]; then
            COMPREPLY=(); compopt -o dirnames 2>/dev/null
        elif [[ $type == 'file' ]]; then
            COMPREPLY=(); compopt -o default 2>/dev/null
        elif [[ $type == 'plain' ]]; then
            COMPREPLY+=("$value")
        fi
    done
    return 0
}
"""

ZSH_GIT = r"""
# `git bake <TAB>`: zsh's git completion calls _git-bake with `words` starting at `bake`
_git-bake() {
    words=(git-bake "${(@)words[2,-1]}")
    _git_bake_completion
}
"""

SHELLS = ("bash", "zsh")


def script(cli: click.Command, shell: str) -> str:
    """The completion script for `shell`: click's for git-bake, and git's hook for `git bake`."""
    from click.shell_completion import BashComplete, ZshComplete

    cls = {"bash": BashComplete, "zsh": ZshComplete}[shell]
    own = cls(cli, {}, PROG, VAR).source()
    return own.rstrip("\n") + "\n" + (BASH_GIT if shell == "bash" else ZSH_GIT)


@click.command(context_settings=CONTEXT)
@click.argument("shell", type=click.Choice(SHELLS))
def completion(shell: str) -> None:
    """Print the shell completion script for SHELL (bash or zsh).

    It completes commands, options and choices after `git bake` (through git's own completion, which
    must be loaded: it is on most systems) and after `git-bake`.

    \b
    Examples:
      git bake completion bash > ~/.local/share/bash-completion/completions/git-bake
      echo 'eval "$(git bake completion bash)"' >> ~/.bashrc
      git bake completion zsh > "${fpath[1]}/_git-bake"
    """
    from gitbake.cli.main import cli

    click.echo(script(cli, shell), nl=False)
