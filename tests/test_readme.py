"""README.md and docs/*.md stay true (issue 25).

Every ```python block of the README and the docs runs, offline, in a folder where
``out/published/dynamicearthnet`` is a small published dataset (a DynamicEarthNet twin,
published to a folder as ``cubecast demo`` does; a hub URL in a block is mapped to a local
HTTP server of that folder). Every ``cubecast`` command line in a ```bash block names a
command and options that exist, and every option of every command is documented; the two
set-up commands are unchanged and the test command is the one ``.ci/run`` runs; every
relative link and anchor leads somewhere; the layout lists files that exist. A block that
cannot run offline says so in an HTML comment on the line before it:
``<!-- test_readme: not run (why) -->``.
"""

from __future__ import annotations

import ast
import importlib.util
import re
import shlex
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import typer.main
from typer.testing import CliRunner

from pipeline.cli import app

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
PAGES = [README, *DOCS]
# BENCHMARKS.md records commands as they were run; its links are checked, its blocks are not
CHECKED = [p for p in PAGES if p.name != "BENCHMARKS.md"]
PUBLISHED = "out/published/dynamicearthnet"  # what `cubecast demo` writes
HUB_BASE = "https://huggingface.co/datasets/ORG/NAME/resolve/main"
SKIP = re.compile(r"<!--\s*test_readme:\s*not run\b")

DEMO = (
    'python3.11 -m venv .venv && . .venv/bin/activate && pip install ".[publish]" && cubecast demo'
)
TESTS = (
    'python3.11 -m venv .venv && . .venv/bin/activate && pip install -e ".[dev]" '
    "&& ruff check . && pytest -q"
)


@dataclass(frozen=True)
class Block:
    page: Path
    line: int  # of the opening fence, 1-based
    lang: str
    text: str
    skip: str | None  # why it is not run, from the marker before it

    @property
    def name(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def blocks(page: Path, lang: str | None = None) -> list[Block]:
    out: list[Block] = []
    lines = page.read_text().splitlines()
    i = 0
    while i < len(lines):
        m = re.match(r"^```(\w*)", lines[i])
        if not m:
            i += 1
            continue
        start = i
        i += 1
        body = []
        while i < len(lines) and not lines[i].startswith("```"):
            body.append(lines[i])
            i += 1
        before = next((x for x in reversed(lines[:start]) if x.strip()), "")
        skip = before.strip() if SKIP.search(before) else None
        if lang is None or m.group(1) == lang:
            out.append(Block(page, start + 1, m.group(1), "\n".join(body) + "\n", skip))
        i += 1
    return out


# ---------------------------------------------------------------- a small published dataset


@pytest.fixture(scope="module")
def published(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``out/published/dynamicearthnet`` as the demo writes it (its twin: 2 cubes, 48 days,
    64 px), encoded fast (x265 ultrafast at CRF 24) so the module takes seconds."""
    from pipeline.publish.incremental import publish_incremental
    from pipeline.sources.twins import write_dynamicearthnet
    from tests.test_incremental import recipe_for

    base = tmp_path_factory.mktemp("readme")
    twin = base / "twin"
    write_dynamicearthnet(twin, cubes=2, frames=48, size=64, progress=False)
    target = base / PUBLISHED
    recipe = recipe_for(str(twin), 2, psnr_min=25.0)
    publish_incremental(recipe, str(target), base / "work", log=lambda s: None)
    return target


@pytest.fixture(scope="module")
def served(published: Path) -> Iterator[str]:
    from tests.rangeserver import RangeServer

    with RangeServer(published) as server:
        yield server.url.rstrip("/")


@pytest.fixture
def workdir(published: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh folder whose ``out/published`` is the published datasets' folder."""
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "published").symlink_to(published.parent, target_is_directory=True)
    monkeypatch.chdir(tmp_path)
    return tmp_path


# ---------------------------------------------------------------- python blocks run


PYTHON = [b for page in CHECKED for b in blocks(page, "python")]


def _missing_module(exc: ModuleNotFoundError, code: str) -> str | None:
    """The block's own import of a package this environment lacks (torch), else None."""
    top = (exc.name or "").split(".")[0]
    imported = re.search(rf"^\s*(from|import)\s+{re.escape(top)}\b", code, re.MULTILINE)
    if top and imported and importlib.util.find_spec(top) is None:
        return top
    return None


@pytest.mark.parametrize("block", PYTHON, ids=[b.name for b in PYTHON])
def test_python_block_runs(block: Block, workdir: Path, request: pytest.FixtureRequest):
    if block.skip:
        pytest.skip(block.skip)
    code = block.text
    if HUB_BASE in code:
        code = code.replace(HUB_BASE, request.getfixturevalue("served"))
    try:
        exec(compile(code, block.name, "exec"), {"__name__": "__main__"})
    except ModuleNotFoundError as exc:
        missing = _missing_module(exc, code)
        if missing is None:
            raise
        pytest.skip(f"{missing} is not installed here")


def test_every_python_block_is_run_or_says_why():
    assert PYTHON, "no python blocks found"
    assert not [b.name for b in PYTHON if b.skip and b.page == README]
    assert all(re.search(r"not run \(.+\)", b.skip) for b in PYTHON if b.skip)


def test_the_readme_reads_what_the_demo_publishes():
    text = README.read_text()
    assert all(PUBLISHED in b.text for b in blocks(README, "python"))
    for needed in ("open_sample(", "variables=", "time=", "CubeDataset(", 'engine="cubecast"'):
        assert needed in text, needed


# ---------------------------------------------------------------- command lines


CLICK = typer.main.get_command(app)


def _options(command: object) -> set[str]:
    opts: set[str] = set()
    for p in command.params:  # type: ignore[attr-defined]
        opts.update(getattr(p, "opts", []))
        opts.update(getattr(p, "secondary_opts", []))
    return opts | {"--help"}


def _flow_parameters() -> set[str]:
    """The parameters of the flow `publish_dataset` (what `-p key=value` may set)."""
    tree = ast.parse((ROOT / "flows" / "publish_dataset.py").read_text())
    fn = next(
        n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == "publish_dataset"
    )
    return {a.arg for a in fn.args.args + fn.args.kwonlyargs}


def _argparse_options(path: Path) -> set[str]:
    found = {"-h", "--help"}
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "add_argument":
            found |= {
                a.value
                for a in node.args
                if isinstance(a, ast.Constant) and str(a.value).startswith("-")
            }
    return found


def commands(text: str) -> Iterator[list[str]]:
    """Each command of a bash block as tokens: continuation lines joined, comments and
    optional-argument brackets dropped, split at ``&&``, ``||``, ``|`` and ``;``."""
    joined = re.sub(r"\\\n", " ", text)
    for line in joined.splitlines():
        tokens = shlex.split(line, comments=True)
        current: list[str] = []
        for t in tokens + ["&&"]:
            if t in ("&&", "||", "|", ";"):
                if current:
                    yield current
                current = []
            else:
                current.append(t.strip("[]"))


def _check_params(tokens: list[str], where: str) -> list[str]:
    flow = _flow_parameters()
    bad = []
    for i, t in enumerate(tokens[:-1]):
        if t in ("-p", "--param"):
            key = tokens[i + 1].split("=", 1)[0]
            if key not in flow:
                bad.append(f"{where}: -p {key}: not a parameter of publish_dataset")
    return bad


def command_problems(block: Block) -> list[str]:
    problems = []
    recipes = {p.stem for p in (ROOT / "datasets").glob("*.toml")}
    for tokens in commands(block.text):
        where = f"{block.name}: {' '.join(tokens)[:80]}"
        if tokens[0] == "cubecast":
            sub = CLICK.commands.get(tokens[1]) if len(tokens) > 1 else None  # type: ignore[attr-defined]
            if sub is None:
                problems.append(f"{where}: no command {tokens[1:2]}")
                continue
            known = _options(sub)
            opts = [t.split("=", 1)[0] for t in tokens[2:] if re.match(r"^--?[A-Za-z]", t)]
            problems += [
                f"{where}: {o} is not an option of {tokens[1]}" for o in opts if o not in known
            ]
            problems += _check_params(tokens, where)
        elif tokens[:3] == ["python", "-m", "flows.incremental"]:
            known = _argparse_options(ROOT / "flows" / "incremental.py")
            opts = [t for t in tokens[3:] if t.startswith("-")]
            problems += [f"{where}: {o} is not an option" for o in opts if o not in known]
        elif tokens[:3] == ["prefect", "deployment", "run"]:
            flow, _, name = tokens[3].partition("/")
            if flow != "publish-dataset" or name.removeprefix("publish-") not in recipes:
                problems.append(f"{where}: no deployment {tokens[3]}")
            problems += _check_params(tokens, where)
    return problems


BASH = [b for page in CHECKED for b in blocks(page, "bash")]


@pytest.mark.parametrize("block", BASH, ids=[b.name for b in BASH])
def test_command_lines_name_real_commands_and_options(block: Block):
    assert command_problems(block) == []


def test_a_wrong_option_is_caught():
    block = Block(README, 1, "bash", "cubecast pack x y --frobnicate 3 # --nope\n", None)
    assert command_problems(block) == [
        "README.md:1: cubecast pack x y --frobnicate 3: --frobnicate is not an option of pack"
    ]
    assert command_problems(Block(README, 1, "bash", "cubecast nope\n", None))


def test_every_command_and_option_is_documented():
    """--help and the docs say the same: a new command or option gets a line in the docs."""
    text = "\n".join(p.read_text() for p in CHECKED)
    guide = (ROOT / "docs" / "USER_GUIDE.md").read_text()
    missing = []
    for name, command in CLICK.commands.items():  # type: ignore[attr-defined]
        if f"`{name}`" not in guide:
            missing.append(f"command {name} (USER_GUIDE.md's table)")
        for param in command.params:  # a flag pair or an option's long and short names:
            names = [*getattr(param, "opts", []), *getattr(param, "secondary_opts", [])]
            long = [o for o in names if o.startswith("--")]  # one of them documented
            if long and not any(re.search(rf"{re.escape(o)}\b(?!-)", text) for o in long):
                missing.append(f"cubecast {name} {'/'.join(long)}")
    assert missing == []


def test_setup_commands_are_unchanged_and_ci_runs_the_test_command():
    setup = [b.text.strip() for b in blocks(README, "bash")[:2]]
    assert setup == [DEMO, TESTS]
    ci = [ln for ln in (ROOT / ".ci" / "run").read_text().splitlines() if "pip install" in ln]
    assert len(ci) == 1
    m = re.fullmatch(
        r"python3\.11 -m venv \.venv && \. \.venv/bin/activate && "
        r'pip install (?:-q )?-e "\.\[dev\]" && (.+)',
        ci[0].strip(),
    )
    assert m, ci[0]
    assert TESTS.endswith(f'-e ".[dev]" && {m.group(1)}'), (m.group(1), TESTS)


def test_ls_and_get_lines_run_on_what_the_demo_publishes(workdir: Path):
    """`cubecast ls` and `get` lines that read the demo's output run as shown."""
    ran = 0
    runner = CliRunner()
    for block in BASH:
        for tokens in commands(block.text):
            if tokens[:2] in (["cubecast", "ls"], ["cubecast", "get"]) and PUBLISHED in tokens[2]:
                r = runner.invoke(app, tokens[1:])
                assert r.exit_code == 0, (block.name, tokens, r.output, r.exception)
                ran += 1
    assert ran >= 2


# ---------------------------------------------------------------- links, index, layout


def slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    in_code = False
    for line in page.read_text().splitlines():
        if line.startswith("```"):
            in_code = not in_code
        m = re.match(r"^#{1,6} (.+)$", line)
        if m and not in_code:
            s = slug(m.group(1))
            n = seen.get(s, 0)
            seen[s] = n + 1
            out.add(s if n == 0 else f"{s}-{n}")
    return out


def test_relative_links_and_anchors_resolve():
    broken = []
    for page in PAGES:
        text = re.sub(r"```.*?```", "", page.read_text(), flags=re.DOTALL)
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"^[a-z]+://|^mailto:", target):
                continue
            path, _, anchor = target.partition("#")
            dest = (page.parent / path).resolve() if path else page
            if not dest.exists():
                broken.append(f"{page.name}: {target}")
            elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
                broken.append(f"{page.name}: {target} (no such heading)")
    assert broken == []


def test_the_readme_is_short_and_lists_every_doc():
    lines = README.read_text().splitlines()
    assert len(lines) <= 160, f"README.md has {len(lines)} lines: move detail into docs/"
    section = README.read_text().split("## Documentation", 1)[1]
    listed = set(re.findall(r"\]\(docs/([^)#]+)\)", section))
    assert {p.name for p in DOCS} <= listed | {"manifest.schema.json"}


def test_the_layout_lists_files_that_exist():
    text = (ROOT / "docs" / "DEVELOPMENT.md").read_text()
    tree = text.split("```text\n", 1)[1].split("```", 1)[0]
    stack: list[str] = []
    absent = []
    for line in tree.splitlines():
        m = re.match(r"^( *)(\S+)", line)
        if not m:
            continue
        depth = len(m.group(1)) // 2
        stack = [*stack[:depth], m.group(2).rstrip("/")]
        if not (ROOT / "/".join(stack)).exists():
            absent.append("/".join(stack))
    assert absent == []


def test_the_reader_install_is_the_repository_the_metadata_names():
    """Until a PyPI release the README installs the reader as the dataset card does."""
    import tomllib

    urls = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["urls"]
    line = f'pip install "cubecast @ git+{urls["Repository"]}"'
    assert line in [ln for b in blocks(README, "bash") for ln in b.text.splitlines()]
