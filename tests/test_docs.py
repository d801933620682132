"""The README against the code: the CLI reference table names every command, argument, option, choice and
default the `annotator` command has (and nothing else); the repo paths it cites exist; nothing cites a file
outside the repo.

The table's conventions, which these tests parse: the first cell is `command ARG ...` (an argument as its
name in capitals, or its choices joined by `|`); the options cell lists each option as `--name [METAVAR]`,
a choice option as `--name a|b`, each optionally followed by a parenthesis. The parenthesis states the
option's default either as `default: X` (up to a `;`) or, when it starts with a number, as its first word:
`--port` (8501), `--workers` (2 decoding processes). A default that the code computes at run time is written
in the option's help as `[default: X]` or `(default: X)`; the README's must state the same numbers."""
from __future__ import annotations

import re
from pathlib import Path

import click
import pytest

from annotator.cli import cli

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()
NUMBER = re.compile(r"\d+(?:,\d{3})*(?:\.\d+)?")


def section(title: str) -> str:
    """The README's text under `## title`, up to the next `## ` heading."""
    start = README.index(f"\n## {title}\n")
    end = README.find("\n## ", start + 1)
    return README[start:end if end >= 0 else None]


def table(text: str, header: str) -> list[list[str]]:
    """Rows (cells, `\\|` unescaped) of the Markdown table in text whose header row starts with header."""
    lines = text[text.index(header):].splitlines()
    rows = []
    for line in lines[2:]:
        if not line.startswith("|"):
            break
        cells = re.split(r"(?<!\\)\|", line.strip())[1:-1]
        rows.append([cell.strip().replace("\\|", "|") for cell in cells])
    return rows


def parenthesis(text: str, start: int) -> tuple[str | None, int]:
    """The balanced parenthesis opening at text[start] after optional spaces: (its inside, the index after
    it), or (None, start) when none opens there."""
    i = start
    while i < len(text) and text[i] == " ":
        i += 1
    if i >= len(text) or text[i] != "(":
        return None, start
    depth = 0
    for j in range(i, len(text)):
        depth += {"(": 1, ")": -1}.get(text[j], 0)
        if depth == 0:
            return text[i + 1:j], j + 1
    raise AssertionError(f"unbalanced parenthesis in {text!r}")


def documented_options(cell: str) -> dict[str, tuple[str, str | None]]:
    """Each `--option [METAVAR]` of an options cell: name -> (metavar, the parenthesis after it)."""
    found, pos = {}, 0
    pattern = re.compile(r"`(--?[a-z][a-z-]*)((?: [^`]+)?)`")
    while match := pattern.search(cell, pos):
        paren, pos = parenthesis(cell, match.end())
        found[match.group(1)] = (match.group(2).strip(), paren)
    return found


def stated_default(paren: str | None) -> str | None:
    """The default a README parenthesis states: after `default:` up to `;`, else the whole of it when it
    starts with a number; None when it states none."""
    if paren is None:
        return None
    if "default:" in paren:
        return paren.split("default:", 1)[1].split(";")[0].strip()
    return paren if re.match(r"\d", paren) else None


def numbers(text: str) -> set[str]:
    """The numbers in text, thousands separators dropped: '16,384 images' -> {'16384'}."""
    return {n.replace(",", "") for n in NUMBER.findall(text)}


def code_default(option: click.Option) -> tuple[str | None, bool]:
    """(the option's default as text, whether it is a literal value) : a literal from the code, else the
    `default: X` its help states (a value computed at run time), else (None, False). Flags have none."""
    default = option.to_info_dict()["default"]
    if default is not None and not option.is_flag and not option.multiple:
        return str(default), True
    stated = re.search(r"default: ([^\])]*)", option.help or "")
    return (stated.group(1).strip(), False) if stated else (None, False)


def commands(group: click.Group, prefix: tuple[str, ...] = ()) -> dict[str, click.Command]:
    """Every runnable command under group, sub-groups walked: 'users add' -> its command."""
    found = {}
    for name, command in group.commands.items():
        if command.hidden:
            continue
        if isinstance(command, click.Group):
            found |= commands(command, (*prefix, name))
        else:
            found[" ".join((*prefix, name))] = command
    return found


CLI_REFERENCE = section("CLI reference")
COMMANDS = commands(cli)


def readme_rows() -> dict[str, tuple[list[str], str]]:
    """The command table: 'users add' -> (the words after the command path, e.g. ['NAME'], its options cell)."""
    rows = {}
    for name_cell, _, options_cell in table(CLI_REFERENCE, "| command | what it does | options |"):
        words = name_cell.strip("`").split()
        n = next((i for i, w in enumerate(words) if not re.fullmatch(r"[a-z][a-z-]*", w)), len(words))
        rows[" ".join(words[:n])] = (words[n:], options_cell)
    return rows


def test_the_table_lists_every_command_and_only_those():
    """A command added to the CLI gets a row; a row for a command that is gone fails."""
    assert sorted(readme_rows()) == sorted(COMMANDS)


def test_the_global_options_are_in_the_synopsis():
    """`annotator [--db FILE] [-v] COMMAND ...`: each option of the root group, in one of its spellings."""
    synopsis = CLI_REFERENCE[:CLI_REFERENCE.index("| command |")]
    for option in cli.params:
        assert any(re.search(rf"\[{re.escape(o)}[ \]]", synopsis) for o in option.opts), option.opts


def row_problems(name: str, command: click.Command, words: list[str], cell: str) -> list[str]:
    """What the README row (words after the command path, options cell) gets wrong about command."""
    problems = []
    arguments = [p for p in command.params if isinstance(p, click.Argument)]
    expected = ["|".join(p.type.choices) if isinstance(p.type, click.Choice) else p.name.upper() for p in arguments]
    if words != expected:
        problems.append(f"arguments: README {words}, code {expected}")
    documented = documented_options(cell)
    options = [p for p in command.params if isinstance(p, click.Option) and not p.hidden]
    unknown = set(documented) - {o for p in options for o in p.opts}
    problems += [f"{o}: in the README, not in the code" for o in sorted(unknown)]
    for option in options:
        spelling = next((o for o in option.opts if o in documented), None)
        if spelling is None:
            problems.append(f"{option.opts[0]}: missing from the README")
            continue
        metavar, paren = documented[spelling]
        if isinstance(option.type, click.Choice) and set(metavar.split("|")) != set(option.type.choices):
            problems.append(f"{spelling}: README choices {metavar!r}, code {'|'.join(option.type.choices)!r}")
        problems += default_problems(spelling, option, stated_default(paren))
    return [f"{name} {p}" for p in problems]


def default_problems(spelling: str, option: click.Option, readme: str | None) -> list[str]:
    """A code default the README does not state, states otherwise, or a README default the code lacks."""
    code, literal = code_default(option)
    if code is None:
        return [] if readme is None else [f"{spelling}: README states default {readme!r}, the code has none"]
    if readme is None:
        return [f"{spelling}: default {code!r} not stated in the README"]
    first = re.sub(r"(?<=\d),(?=\d{3})", "", readme.split()[0]).rstrip(":;,.")
    if (literal and first != code) or (not literal and numbers(readme) != numbers(code)):
        return [f"{spelling}: README default {readme!r}, code {code!r}"]
    return []


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_each_row_matches_its_command(name):
    """Arguments, options, choices and defaults of the row are the command's."""
    rows = readme_rows()
    if name not in rows:
        pytest.fail(f"{name}: no row in the README's CLI reference")
    problems = row_problems(name, COMMANDS[name], *rows[name])
    assert not problems, "\n".join(problems)


def test_the_help_states_the_library_defaults():
    """The defaults `extract` computes at run time are the ones its help (so the README) states."""
    import torch

    from cleannet_core.features import SHARD_ROWS
    from cleannet_core.loading import default_batch_size

    params = {p.name: p for p in COMMANDS["extract"].params}
    batch = code_default(params["batch_size"])[0]
    assert re.search(r"(\d+) on a GPU", batch).group(1) == str(default_batch_size(torch.device("cuda")))
    assert re.search(r"(\d+) on a CPU", batch).group(1) == str(default_batch_size(torch.device("cpu")))
    assert numbers(code_default(params["flush_every"])[0]) == {str(SHARD_ROWS)}


def test_the_parser_reads_what_the_table_writes():
    """The conventions above, on cells written like the README's, so a parser change cannot hide a mismatch."""
    cell = ("`--port` (8501), `--role annotator|lead` (required), `--csv FILE` (`path,label[,x]`) with "
            "`--root DIR`, `--out FILE` (default: `<state folder>/x/`), `--threshold X` (a number in [-1, 1]; "
            "default: the delta), `--flush-every` (16,384 images per shard)")
    found = documented_options(cell)
    assert {k: stated_default(p) for k, (_, p) in found.items()} == {
        "--port": "8501", "--role": None, "--csv": None, "--root": None, "--out": "`<state folder>/x/`",
        "--threshold": "the delta", "--flush-every": "16,384 images per shard"}
    assert found["--role"][0] == "annotator|lead" and found["--root"] == ("DIR", None)
    port = click.Option(["--port"], default=8501)
    assert default_problems("--port", port, "8501") == []
    assert default_problems("--port", port, "8502") and default_problems("--port", port, None)
    computed = click.Option(["--batch-size"], help="[default: 256 on a GPU, 32 on a CPU]")
    assert default_problems("--batch-size", computed, "256") != []
    assert default_problems("--batch-size", computed, "256 on a GPU, 32 on a CPU") == []
    assert default_problems("--x", click.Option(["--x"]), "3") != []
