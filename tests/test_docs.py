"""Every command the README and docs/*.md show is one the CLI accepts.

For each fenced shell block (```bash, ```sh, ```console, ```shell or no language) the lines
that run `python -m bench|neu|exports ...` (also after `$ `, behind `VAR=value` assignments,
under `torchrun ... -m`, continued with `\\`) are parsed: the subcommand (the first word after
the module that is not a flag) must answer `--help` with exit 0, and every `--flag` written on
the line must appear in that help. A renamed flag or subcommand then fails here, naming the
file and line, instead of failing a user who copies the command.
"""

from __future__ import annotations

import difflib
import os
import re
import shlex
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODULES = ("bench", "neu", "exports")
SHELL_LANGS = {"", "bash", "sh", "shell", "console", "zsh"}
README_MAX_LINES = 250
# Words that may stand before the command itself: `nice python -m ...`, `env X=1 python ...`.
WRAPPERS = {"env", "nice", "time", "nohup", "exec", "command"}
SEPARATORS = {"&&", "||", ";", "|", "&", "(", ")"}
FLAG = re.compile(r"--[A-Za-z0-9][A-Za-z0-9_-]*")
ASSIGNMENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*=")
PYTHON = re.compile(r"(.*/)?python(3(\.\d+)?)?")


@dataclass(frozen=True)
class Command:
    file: str  # relative to the repository root
    line: int  # 1-based, the first line of a continued command
    text: str  # as written, continuations joined
    module: str
    subcommand: str | None  # None: the module's own --help
    flags: tuple[str, ...]


def doc_files() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def shell_blocks(text: str):
    """(first line number, lines) of every fenced block whose language is a shell's or none."""
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        m = re.match(r"\s*(`{3,}|~{3,})\s*([^\s`]*)", lines[i])
        if not m:
            i += 1
            continue
        fence, lang = m.group(1), m.group(2).lower().strip("{}.")
        body, start, i = [], i + 2, i + 1
        while i < len(lines) and not re.fullmatch(rf"\s*{fence[0]}{{{len(fence)},}}\s*", lines[i]):
            body.append(lines[i])
            i += 1
        i += 1  # the closing fence
        if lang in SHELL_LANGS:
            yield start, body


def logical_lines(start: int, body: list[str]):
    """(line number, text) with `\\`-continued lines joined."""
    i = 0
    while i < len(body):
        first, text = start + i, body[i]
        while text.rstrip().endswith("\\") and i + 1 < len(body):
            i += 1
            text = text.rstrip()[:-1] + " " + body[i].strip()
        yield first, text
        i += 1


def tokens(text: str) -> list[str]:
    lex = shlex.shlex(text, posix=True, punctuation_chars=True)
    lex.whitespace_split, lex.commenters = True, ""
    try:
        words = list(lex)
    except ValueError:  # an unbalanced quote (a multi-line string): split on blanks
        words = text.split()
    for k, w in enumerate(words):
        if w.startswith("#"):  # a shell comment, up to the end of the line
            return words[:k]
    return words


def segments(words: list[str]):
    """The simple commands of a line: split at &&, ||, ;, | and &."""
    seg: list[str] = []
    for w in words:
        if w in SEPARATORS:
            if seg:
                yield seg
            seg = []
        else:
            seg.append(w)
    if seg:
        yield seg


def our_command(seg: list[str]) -> tuple[str, list[str]] | None:
    """(module, the words after it) when the simple command runs one of our modules."""
    k = 0
    while k < len(seg) and (ASSIGNMENT.match(seg[k]) or seg[k] in WRAPPERS):
        k += 1
    if k >= len(seg):
        return None
    prog, rest = seg[k], seg[k + 1 :]
    if not (PYTHON.fullmatch(prog) or prog == "torchrun"):
        return None
    if "-m" not in rest:
        return None
    j = rest.index("-m")
    if j + 1 >= len(rest):
        return None
    module, after = rest[j + 1], rest[j + 2 :]
    if module == "torch.distributed.run" and "-m" in after:  # torchrun spelled out
        j = after.index("-m")
        if j + 1 >= len(after):
            return None
        module, after = after[j + 1], after[j + 2 :]
    return (module, after) if module in MODULES else None


def commands_in(path: Path) -> list[Command]:
    rel = path.relative_to(ROOT).as_posix()
    found = []
    for start, body in shell_blocks(path.read_text(encoding="utf-8")):
        for lineno, text in logical_lines(start, body):
            stripped = text.strip()
            if stripped.startswith("$ "):
                stripped = stripped[2:]
            for seg in segments(tokens(stripped)):
                hit = our_command(seg)
                if hit is None:
                    continue
                module, after = hit
                sub = next((w for w in after if not w.startswith("-")), None)
                flags = []
                for w in after:
                    m = FLAG.match(w.lstrip("[("))
                    if m and m.group(0) not in flags:
                        flags.append(m.group(0))
                shown = " ".join(text.split(" #")[0].split())  # without the comment
                found.append(Command(rel, lineno, shown, module, sub, tuple(flags)))
    return found


def run_help(module: str, sub: str | None) -> tuple[int, str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT), COLUMNS="1000", OMP_NUM_THREADS="1")
    argv = [sys.executable, "-m", module, *([sub] if sub else []), "--help"]
    try:
        p = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired:
        return 124, "timed out after 120 s"
    return p.returncode, p.stdout + p.stderr


def flag_in_help(flag: str, help_text: str) -> bool:
    def shown(f: str) -> bool:
        return re.search(rf"(?<![\w-]){re.escape(f)}(?![\w-])", help_text) is not None

    if shown(flag):
        return True
    if flag.startswith("--no-"):  # a boolean flag shown as --[no-]flag or --flag/--no-flag
        base = flag[len("--no-") :]
        return re.search(rf"--\[no-\]{re.escape(base)}(?![\w-])", help_text) is not None
    return False


def problems(commands: list[Command], helps: dict[tuple[str, str | None], tuple[int, str]]):
    out = []
    for c in commands:
        shown = f"python -m {c.module}" + (f" {c.subcommand}" if c.subcommand else "")
        rc, text = helps[(c.module, c.subcommand)]
        where = f"{c.file}:{c.line}: `{c.text}`"
        if rc != 0:
            tail = " | ".join(text.strip().splitlines()[-3:])
            choices = re.search(r"\{([\w,-]+)\}", text)  # argparse's {run,speed,...}
            near = difflib.get_close_matches(
                c.subcommand or "", choices.group(1).split(",") if choices else [], n=1
            )
            hint = f"did you mean `python -m {c.module} {near[0]}`?" if near else "use a subcommand"
            out.append(
                f"{where}\n    `{shown} --help` exits {rc} ({tail})\n    fix: {hint} "
                f"(`python -m {c.module} --help` lists them), or repair the CLI"
            )
            continue
        known = sorted(set(FLAG.findall(text)))
        for flag in c.flags:
            if not flag_in_help(flag, text):
                near = difflib.get_close_matches(flag, known, n=3)
                hint = f"did you mean {' or '.join(near)}?" if near else "drop it"
                out.append(
                    f"{where}\n    {flag} is not an option of `{shown}` (not in its --help)"
                    f"\n    fix: {hint} (see `{shown} --help`)"
                )
    return out


def all_commands() -> list[Command]:
    return [c for path in doc_files() for c in commands_in(path)]


def test_every_documented_command_parses():
    commands = all_commands()
    # A parser that finds nothing would pass vacuously: the README shows at least these.
    kinds = {(c.module, c.subcommand) for c in commands}
    assert {("bench", "run"), ("neu", "download"), ("exports", "predict")} <= kinds, kinds
    pairs = sorted(kinds, key=lambda k: (k[0], k[1] or ""))
    with ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2)) as pool:
        helps = dict(zip(pairs, pool.map(lambda k: run_help(*k), pairs), strict=True))
    bad = problems(commands, helps)
    assert not bad, f"{len(bad)} documented command(s) the CLI does not accept:\n" + "\n".join(bad)


def test_readme_is_a_guide_not_a_notebook():
    n = len((ROOT / "README.md").read_text(encoding="utf-8").splitlines())
    assert n <= README_MAX_LINES, (
        f"README.md has {n} lines (at most {README_MAX_LINES}): move details to docs/ "
        "and link them in one line"
    )


# The parser and the checker themselves, on made-up text: the test above must be able to fail.

SAMPLE = """\
text `python -m bench run --not-a-command` outside a block
```bash
python3 -m bench run --models all --epochs 2 # comment --ignored
$ NEU_DATA=/data OMP_NUM_THREADS=1 python -m neu inspect "$DATA" --json
torchrun --nproc-per-node 2 -m bench run --models x \\
    --device cpu --no-hflip
python3 -m pip install --upgrade tox && python -m exports predict m.onnx img/ --json
python -m bench calibrate runs/x [--target-accuracy 0.99]
```
```python
# python -m bench run --in-python-code
```
```
python -m exports
```
"""


def test_parser_finds_the_commands_and_only_those(tmp_path, monkeypatch):
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    (tmp_path / "README.md").write_text(SAMPLE)
    found = commands_in(tmp_path / "README.md")
    assert found[0].text == "python3 -m bench run --models all --epochs 2"  # comment dropped
    got = [(c.line, c.module, c.subcommand, c.flags) for c in found]
    assert got == [
        (3, "bench", "run", ("--models", "--epochs")),
        (4, "neu", "inspect", ("--json",)),
        (5, "bench", "run", ("--models", "--device", "--no-hflip")),
        (7, "exports", "predict", ("--json",)),
        (8, "bench", "calibrate", ("--target-accuracy",)),
        (14, "exports", None, ()),
    ]


def test_checker_reports_a_bad_flag_and_a_missing_subcommand():
    help_run = "usage: python -m bench run [--models STR] [--hflip | --no-hflip] [--epochs INT]"
    helps = {
        ("bench", "run"): (0, help_run),
        ("bench", "nope"): (2, "invalid choice: 'nope'"),
        ("bench", "lsit"): (2, "usage: python -m bench [-h] {run,list} ...\ninvalid choice"),
    }
    cmds = [
        Command("README.md", 3, "...", "bench", "run", ("--models", "--no-hflip")),
        Command("README.md", 4, "...", "bench", "run", ("--epoch", "--bogus")),
        Command("docs/x.md", 9, "...", "bench", "nope", ("--models",)),
        Command("docs/x.md", 12, "...", "bench", "lsit", ()),
    ]
    bad = problems(cmds, helps)
    assert len(bad) == 4
    assert bad[0].startswith("README.md:4:") and "did you mean --epochs?" in bad[0]
    assert "--bogus is not an option" in bad[1] and "drop it" in bad[1]
    assert bad[2].startswith("docs/x.md:9:") and "exits 2" in bad[2]
    assert "did you mean `python -m bench list`?" in bad[3]
    assert flag_in_help("--no-x", "--[no-]x") and not flag_in_help("--no-x", "--x")
