"""``exec-server completion bash|zsh``: a completion script made from the parser itself, so
it always knows every command and option."""

from __future__ import annotations

import argparse
import shlex


def _words(parser: argparse.ArgumentParser) -> dict[str, list[str]]:
    """Each subcommand's option strings; ``""``: the subcommands and the server's options."""
    words: dict[str, list[str]] = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            words[""] = list(action.choices)
            for name, sub in action.choices.items():
                words[name] = [o for a in sub._actions for o in a.option_strings]
                words[name] += [
                    c for a in sub._actions for c in (a.choices or ()) if not a.option_strings
                ]
    return words


def script(parser: argparse.ArgumentParser, shell: str) -> str:
    """The completion script for ``shell`` (bash, or zsh through bashcompinit)."""
    words = _words(parser)
    cases = "\n".join(
        f"        {shlex.quote(name)}) opts={shlex.quote(' '.join(options))} ;;"
        for name, options in words.items()
        if name
    )
    top = " ".join([*words[""], "serve", "--help", "--version"])
    body = f"""_exec_server() {{
    local cur=${{COMP_WORDS[COMP_CWORD]}} command="" opts="" i
    for ((i = 1; i < COMP_CWORD; i++)); do
        case ${{COMP_WORDS[i]}} in -*) ;; *) command=${{COMP_WORDS[i]}}; break ;; esac
    done
    if [[ -z $command ]]; then
        COMPREPLY=($(compgen -W {shlex.quote(top)} -- "$cur"))
        return
    fi
    case $command in
{cases}
    esac
    if [[ $cur == -* ]]; then
        COMPREPLY=($(compgen -W "$opts" -- "$cur"))
    else
        COMPREPLY=($(compgen -f -- "$cur"))
    fi
}}
complete -o filenames -F _exec_server exec-server
"""
    if shell == "zsh":
        return "autoload -U +X bashcompinit && bashcompinit\n" + body
    return body
