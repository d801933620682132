"""The docs against the code: the README's CLI reference table names every command, argument, option, choice
and default the `annotator` command has (and nothing else); the repo paths the README cites exist; every
"spec §N" cited is a section of docs/cleannet-spec.md; no code or doc cites a file outside the repo.

The table's conventions, which these tests parse: the first cell is `command ARG ...` (an argument as its
name in capitals, or its choices joined by `|`); the options cell lists each option as `--name [METAVAR]`,
a choice option as `--name a|b`, each optionally followed by a parenthesis. The parenthesis states the
option's default either as `default: X` (up to a `;`) or, when it starts with a number, as its first word:
`--port` (8501), `--workers` (2 decoding processes). A default that the code computes at run time is written
in the option's help as `[default: X]` or `(default: X)`; the README's must state the same numbers."""
from __future__ import annotations

import os
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


SOURCE_ROOTS = ("annotator/", "cleannet_core/", "benchmarks/", "docs/", "tests/", "data/demo/", ".streamlit/")
PATH_LIKE = re.compile(r"[\w.*<>-]+(?:/[\w.*<>-]*)*")
FILE_SUFFIX = re.compile(r"\.(py|md|toml|txt|sh|ini|json)$")


def cited_paths(text: str) -> list[str]:
    """Backticked tokens of text that name a file or folder: a path with a `/`, or a name with a file suffix."""
    tokens = re.findall(r"`([^`\s]+)`", text)
    return [t for t in tokens if PATH_LIKE.fullmatch(t) and ("/" in t or FILE_SUFFIX.search(t))]


def exists(base: Path, path: str) -> bool:
    """path (a glob pattern allowed, e.g. requirements*.txt) names something under base."""
    return any(base.glob(path.rstrip("/"))) if "*" in path else (base / path).exists()


def test_repo_paths_the_readme_cites_exist():
    """Every backticked path under one of the repo's source folders (`cleannet_core/probe.py`,
    `docs/cleannet-spec.md`) exists; runtime paths (`data/state/`, `~/.local/...`) are not checked."""
    missing = [p for p in cited_paths(README) if p.startswith(SOURCE_ROOTS) and not exists(REPO, p)]
    assert not missing, missing


def test_the_layout_table_names_real_files():
    """Each Layout row: its paths exist, and the files it names (`model.py`, `store/`) exist in its folder."""
    missing = []
    for path_cell, what in table(section("Layout"), "| path | what |"):
        paths = cited_paths(path_cell)
        missing += [p for p in paths if not exists(REPO, p)]
        base = REPO / paths[0] if paths[0].endswith("/") else REPO
        for name in cited_paths(what):
            if not exists(REPO if name.startswith(SOURCE_ROOTS) else base, name):
                missing.append(f"{paths[0]}: {name}")
    assert not missing, missing


def test_the_path_checks_can_fail(tmp_path):
    """The two checks above on names that do not exist."""
    assert cited_paths("see `docs/none.md`, `model.py` and `st.navigation` (`a b`)") == ["docs/none.md", "model.py"]
    (tmp_path / "requirements.txt").write_text("")
    assert exists(tmp_path, "requirements*.txt") and not exists(tmp_path, "requirements*.cfg")
    assert not exists(tmp_path, "docs/none.md")


TEXT_SUFFIXES = {".py", ".md", ".txt", ".toml", ".ini", ".cfg", ".sh", ".yml", ".yaml", ""}
SKIPPED_NAMES = {".git", ".venv", "__pycache__", ".pytest_cache", "build", ".carry"}
SKIPPED_FOLDERS = {"data/state", "benchmarks/out", "benchmarks/.cache", "tests/artifacts"}  # runtime output


def source_files() -> list[Path]:
    """The repo's code and docs: its text files, outside version control, virtual environments, caches and
    runtime output. Benchmark result JSON files are records of the commands that produced them, not
    citations."""
    files = []
    for folder, dirs, names in os.walk(REPO):
        rel = Path(folder).relative_to(REPO)
        dirs[:] = [d for d in dirs if d not in SKIPPED_NAMES and not d.endswith(".egg-info")
                   and (rel / d).as_posix() not in SKIPPED_FOLDERS]
        files += [Path(folder, n) for n in names if Path(n).suffix in TEXT_SUFFIXES]
    return files


def test_nothing_cites_files_outside_the_repo():
    """A user's clone has nothing next to it: the spec ships as docs/cleannet-spec.md, and a data folder
    outside the repo is an argument (`make bench CIFAR10N=DIR`), never a path written in code or docs."""
    outside = "../" + "shared"  # spelled in two parts so that this file does not contain it
    files = source_files()
    assert REPO / "Makefile" in files and REPO / "docs" / "cleannet-spec.md" in files
    hits = [f"{path.relative_to(REPO)}:{n}" for path in files
            for n, line in enumerate(path.read_text(errors="replace").splitlines(), 1) if outside in line]
    assert not hits, "\n".join(hits)


def test_every_spec_section_cited_exists():
    """`§N` / `§N.M` / `§N.M-N.M` in code and docs (all of them cite the spec) are headings of
    docs/cleannet-spec.md, so the sections keep the numbers the comments use."""
    spec = REPO / "docs" / "cleannet-spec.md"
    headings = set(re.findall(r"^#{2,3} (\d+(?:\.\d+)?)\.? ", spec.read_text(), re.M))
    cited = {n for path in source_files() if path != spec
             for match in re.finditer(r"§(\d+(?:\.\d+)?)(?:-(\d+(?:\.\d+)?))?", path.read_text(errors="replace"))
             for n in match.groups() if n}
    assert {"1", "3.2", "4.1", "6", "10"} <= cited  # the parser finds what the code cites
    assert sorted(cited - headings) == []


def test_the_export_columns_read_as_the_code_documents_them():
    """Each full-format column's row in the README's export table is ``export.COLUMN_DOCS``' text (the Export page
    shows that text too), so neither drifts from the other."""
    from annotator.export import COLUMN_DOCS
    stale = [name for name, doc in COLUMN_DOCS.items() if f"| `{name}` | {doc} |" not in README]
    assert stale == []
