"""The shape of the package: imports point one way, modules stay small, names live once."""

from __future__ import annotations

import ast
import hashlib
import re
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

from bigmodel_cli.placement.strategies import STRATEGIES

PACKAGE = Path(__file__).resolve().parents[1] / "bigmodel_cli"
MAX_LINES = 400
RUN = 6  # lines of a repeated run that count as duplication


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imported(path: Path, known: Mapping[str, Path]) -> set[str]:
    """Modules of the package that ``path`` imports anywhere (top level, in functions,
    under TYPE_CHECKING): ``from a.b import c`` counts ``a.b.c`` when that is a module."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)
    return {name for name in found if name in known}


def import_graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imported(path, known) - {name} for name, path in known.items()}


def find_cycle(graph: Mapping[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as a list of nodes (first == last), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)) is not None:
                return cycle
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)) is not None:
            return cycle
    return None


def test_cycle_finder_finds_a_cycle_and_accepts_a_tree() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_no_import_cycle_inside_the_package() -> None:
    graph = import_graph()
    assert len(graph) > 30 and any(graph.values())  # the walk saw the package
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_a_new_cycle_would_be_found() -> None:
    graph = import_graph()
    graph["bigmodel_cli.formats.safetensors"] = graph["bigmodel_cli.formats.safetensors"] | {
        "bigmodel_cli.run"
    }
    assert find_cycle(graph) is not None


@pytest.mark.parametrize(
    ("lower", "upper"),
    [
        ("formats", "checkpoint"),
        ("formats", "placement"),
        ("checkpoint", "sharding"),
        ("checkpoint", "placement"),
        ("checkpoint", "run"),
        ("placement", "run"),
        ("sharding", "placement"),
        ("placement", "sharding"),
        ("placement", "render"),
        ("run", "render"),
        ("sharding", "run"),
        ("render", "cli"),
        ("formats", "runtime"),
        ("checkpoint", "runtime"),
        ("runtime", "placement"),
        ("runtime", "run"),
        ("runtime", "render"),
    ],
)
def test_imports_point_one_way(lower: str, upper: str) -> None:
    """A stage never imports a later stage (or a sibling it does not build on)."""
    graph = import_graph()
    prefix, target = f"bigmodel_cli.{lower}", f"bigmodel_cli.{upper}"
    wrong = sorted(
        f"{src} -> {dst}"
        for src, dsts in graph.items()
        if src == prefix or src.startswith(prefix + ".")
        for dst in dsts
        if dst == target or dst.startswith(target + ".")
    )
    assert not wrong, wrong


def test_no_module_over_400_lines() -> None:
    long = {
        name: n
        for name, p in modules().items()
        if (n := len(p.read_text().splitlines())) > MAX_LINES
    }
    assert not long, long


def _kind_constants(tree: ast.AST) -> set[int]:
    """Ids of string constants that are a checkpoint's ``kind`` ("pipeline" is also a
    strategy's name): compared with ``.kind``, in a ``Literal[...]``, or given to
    ``Checkpoint(...)``."""
    found: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare):
            sides = [node.left, *node.comparators]
            if any(isinstance(s, ast.Attribute) and s.attr == "kind" for s in sides):
                found.update(id(s) for s in sides)
        elif isinstance(node, ast.Subscript) and getattr(node.value, "id", None) == "Literal":
            found.update(id(n) for n in ast.walk(node.slice))
        elif isinstance(node, ast.Call) and getattr(node.func, "id", None) == "Checkpoint":
            found.update(id(a) for a in node.args)
    return found


def _string_constants() -> Iterator[tuple[str, str]]:
    for name, path in modules().items():
        tree = ast.parse(path.read_text())
        kinds = _kind_constants(tree)
        for node in ast.walk(tree):
            is_text = isinstance(node, ast.Constant) and isinstance(node.value, str)
            if is_text and id(node) not in kinds:
                yield name, node.value  # type: ignore[attr-defined]


@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
def test_each_strategy_name_is_written_once(strategy: str) -> None:
    places = [module for module, text in _string_constants() if text == strategy]
    assert places == ["bigmodel_cli.placement.strategies"], places


def _code_lines(path: Path) -> list[tuple[int, str]]:
    """Lines that carry code: no blanks, comments, lone punctuation, imports; spaces folded."""
    kept = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        text = " ".join(line.split())
        if not text or text.startswith(("#", "import ", "from ")) or text in "()[]{},:":
            continue
        if text in (")", "],", "),", "},", "]", "}", '"""', ") -> None:"):
            continue
        kept.append((number, text))
    return kept


def test_no_run_of_six_code_lines_is_repeated() -> None:
    seen: dict[str, tuple[str, int, int]] = {}  # window -> module, index, line number
    repeats = []
    for name, path in modules().items():
        lines = _code_lines(path)
        for i in range(len(lines) - RUN + 1):
            window = "\n".join(text for _, text in lines[i : i + RUN])
            key = hashlib.sha1(window.encode()).hexdigest()
            first = seen.setdefault(key, (name, i, lines[i][0]))
            if first[0] != name or i - first[1] >= RUN:
                repeats.append(f"{name}:{lines[i][0]} repeats {first[0]}:{first[2]}")
    assert not repeats, repeats


# ---------------------------------------------------------------- one path per job

MODEL_LIBRARIES = ("diffusers", "transformers")
BUILDERS = ("from_pretrained", "from_config", "_from_config")  # a model built by its library
BUILD_HOME = "bigmodel_cli.runtime.library"


def _calls(tree: ast.AST, names: tuple[str, ...]) -> Iterator[ast.Call]:
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if called in names:
                yield node


def builds_models(tree: ast.AST) -> list[str]:
    """How a module imports diffusers / transformers or builds a model with them: an
    ``import`` of either (or of a submodule), ``import_module("transformers...")``, or a
    call of a method named ``from_pretrained`` / ``from_config`` / ``_from_config``."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names if a.name.split(".")[0] in MODEL_LIBRARIES]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found += [node.module] if node.module.split(".")[0] in MODEL_LIBRARIES else []
    for call in _calls(tree, ("import_module", "__import__")):
        arg = call.args[0] if call.args else None
        if isinstance(arg, ast.Constant) and str(arg.value).split(".")[0] in MODEL_LIBRARIES:
            found.append(f"import_module({arg.value!r})")
    for call in _calls(tree, BUILDERS):
        if isinstance(call.func, ast.Attribute):  # x.from_pretrained(...), not ours
            found.append(f"line {call.lineno}: .{call.func.attr}(...)")
    return found


def test_only_the_library_module_imports_diffusers_or_transformers_and_builds_models() -> None:
    """One function builds a component with its library (runtime/library.py)."""
    elsewhere = {
        name: how
        for name, path in modules().items()
        if name != BUILD_HOME and (how := builds_models(ast.parse(path.read_text())))
    }
    assert not elsewhere, elsewhere
    assert builds_models(ast.parse(modules()[BUILD_HOME].read_text()))  # the check sees it


def test_a_second_model_builder_would_be_found() -> None:
    for code in (
        "from transformers import AutoModel",
        "import diffusers.models",
        "importlib.import_module('transformers.masking_utils')",
        "def f(cls, p):\n    return cls.from_pretrained(p)",
        "def f(cls, c):\n    return cls._from_config(c)",
    ):
        assert builds_models(ast.parse(code)), code
    assert not builds_models(ast.parse("from bigmodel_cli.runtime.library import from_pretrained"))


GPU_READER = "bigmodel_cli.run.gpu_reader"


def _called(node: ast.Call) -> str:
    func = node.func
    return func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")


def _byte_buffers(fn: ast.AST) -> set[str]:
    """Names bound in ``fn`` to bytes read into memory: ``torch.frombuffer(...)`` or a
    ``torch.empty/zeros(..., dtype=torch.uint8)``."""
    names = set()
    for node in ast.walk(fn):
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Call):
            call = node.value
            uint8 = any(ast.unparse(k.value).endswith("uint8") for k in call.keywords)
            if _called(call) == "frombuffer" or (_called(call) in ("empty", "zeros") and uint8):
                names |= {t.id for t in node.targets if isinstance(t, ast.Name)}
    return names


def _to_device(node: ast.Call) -> bool:
    """``x.cuda(...)``, or ``x.to(...)`` given a device (not a dtype)."""
    if _called(node) == "cuda":
        return True
    given = [ast.unparse(a) for a in node.args] + [k.arg or "" for k in node.keywords]
    return _called(node) == "to" and any("device" in g or "cuda" in g for g in given)


def _stages(node: ast.Call) -> bool:
    """A pinned buffer, an asynchronous copy, a CUDA stream or event."""
    keywords = {k.arg for k in node.keywords}
    if _called(node) == "pin_memory" or {"pin_memory", "non_blocking"} & keywords:
        return True
    return _called(node) in ("Stream", "Event", "stream") and "cuda" in ast.unparse(node.func)


def gpu_read_loops(tree: ast.AST) -> list[str]:
    """What puts read bytes on a device: a pinned host buffer (``pin_memory``), an
    asynchronous copy (``non_blocking=``), a CUDA stream or event, or a byte buffer of a
    function (:func:`_byte_buffers`, or ``torch.frombuffer(...)`` itself) moved to a
    device (``.to(device)``, ``.cuda()``). Only the one GPU reader may hold any."""
    found = set()
    for fn in ast.walk(tree):
        if not isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef | ast.Module):
            continue
        buffers = _byte_buffers(fn)
        for node in ast.walk(fn):
            if not isinstance(node, ast.Call):
                continue
            receiver = node.func.value if isinstance(node.func, ast.Attribute) else None
            read = (isinstance(receiver, ast.Name) and receiver.id in buffers) or (
                isinstance(receiver, ast.Call) and _called(receiver) == "frombuffer"
            )
            if _stages(node) or (read and _to_device(node)):
                found.add(f"line {node.lineno}: {ast.unparse(node)[:60]}")
    return sorted(found)


def test_one_gpu_reader_stages_bytes_onto_a_gpu() -> None:
    elsewhere = {
        name: how
        for name, path in modules().items()
        if name != GPU_READER and (how := gpu_read_loops(ast.parse(path.read_text())))
    }
    assert not elsewhere, elsewhere
    assert gpu_read_loops(ast.parse(modules()[GPU_READER].read_text()))  # the check sees it


def test_a_second_gpu_read_loop_would_be_found() -> None:
    for code in (  # the two this replaced: the ranks' one-buffer copy, the Hub's .to()
        "def f(n):\n    s = torch.empty(n, dtype=torch.uint8).pin_memory()",
        "def f(n, device):\n    buf = torch.empty(n, dtype=torch.uint8)\n    return buf.to(device)",
        "def f(b, d):\n    return torch.frombuffer(b, dtype=torch.uint8).cuda(d)",
        "def f(a, b):\n    a.copy_(b, non_blocking=True)",
        "def f(d):\n    return torch.cuda.Stream(d)",
    ):
        assert gpu_read_loops(ast.parse(code)), code
    assert not gpu_read_loops(ast.parse("def f(t, device):\n    return t.to(device)"))
    assert not gpu_read_loops(ast.parse("def f(b, dt):\n    return torch.frombuffer(b).to(dt)"))


# where output may be written: the command line and its renderers (and the tracing
# worker, whose stdout is its JSON reply to the parent process, read by no one else)
SPEAKERS = ("bigmodel_cli.cli", "bigmodel_cli.render", "bigmodel_cli.progress")
WORKER_REPLY = {"bigmodel_cli.runtime.tracing": 1}


def writes_output(tree: ast.AST) -> list[str]:
    """``print(...)``, ``sys.stdout.write`` / ``sys.stderr.write`` (also ``.flush``-less
    ``print(file=...)``), ``traceback.print_*``, ``typer.echo``."""
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        text = ast.unparse(node.func)
        if (
            text in ("print", "typer.echo", "echo")
            or text.startswith("traceback.print")
            or text in ("sys.stdout.write", "sys.stderr.write")
        ):
            found.append(f"line {node.lineno}: {text}")
    return found


def _speaks(name: str) -> bool:
    return name.startswith(SPEAKERS) or name.startswith("bigmodel_cli.cli_")


def test_only_the_cli_and_its_renderers_write_output() -> None:
    """The core raises and returns; cli.py, cli_*.py, render/ and progress.py print."""
    elsewhere = {
        name: how
        for name, path in modules().items()
        if not _speaks(name)
        and len(how := writes_output(ast.parse(path.read_text()))) > WORKER_REPLY.get(name, 0)
    }
    assert not elsewhere, elsewhere
    assert writes_output(ast.parse(modules()["bigmodel_cli.cli"].read_text()))


def test_output_written_elsewhere_would_be_found() -> None:
    for code in ("print('x')", "sys.stderr.write('w')", "sys.stdout.write('x')"):
        assert writes_output(ast.parse(code)), code
    assert not writes_output(ast.parse("log.write('x')"))


def test_reading_a_plan_imports_no_strategy(tmp_path: Path) -> None:
    """``read_plan`` checks the strategy's name against the registry, which names each
    strategy's function without importing it."""
    from bigmodel_cli.placement import make_plan

    plan = make_plan(PACKAGE.parent / "fixtures" / "tiny-pipeline", max_memory="0=2MB,cpu=1GB")
    plan.save(tmp_path / "plan.json")
    modules = sorted(
        f"bigmodel_cli.placement.{s.function.split(':')[0]}" for s in STRATEGIES.values()
    )
    code = (
        "import sys; from bigmodel_cli.placement.plan import read_plan; "
        f"read_plan({str(tmp_path / 'plan.json')!r}); "
        f"print(sorted(m for m in {modules!r} if m in sys.modules))"
    )
    found = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert found.stdout.strip() == "[]", found.stdout


# ---------------------------------------------------------------- the library raises; CLI speaks

CLI_MODULES = ("bigmodel_cli.cli", "bigmodel_cli.render")  # cli.py, cli_*.py, render/
FLAG = re.compile(r"(?<![\w-])--[a-z][a-z-]*")


def _is_cli(module: str) -> bool:
    return module.startswith(CLI_MODULES)


def _messages(tree: ast.AST) -> Iterator[tuple[int, str]]:
    """Text that a raise statement (or an error built to be raised) carries."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Raise) and node.exc is not None:
            carried: ast.AST = node.exc
        elif isinstance(node, ast.Call) and _called(node).endswith(("Error", "Exception")):
            carried = node
        else:
            continue
        for part in ast.walk(carried):
            if isinstance(part, ast.Constant) and isinstance(part.value, str):
                yield part.lineno, part.value


def flags_in_raised_messages(sources: Mapping[str, str]) -> list[str]:
    found = {
        f"{module}:{line}: {text!r}"
        for module, source in sources.items()
        if not _is_cli(module)
        for line, text in _messages(ast.parse(source))
        if FLAG.search(text)
    }
    return sorted(found)


def test_no_cli_flag_is_named_in_an_error_raised_outside_the_cli() -> None:
    """The library names the API argument (``max_shard_size``, with ``argument=``); the CLI
    (``as_flags``) spells it as its flag."""
    sources = {name: p.read_text() for name, p in modules().items()}
    assert not flags_in_raised_messages(sources)


def test_a_flag_in_a_library_error_would_be_found() -> None:
    bad = 'def f(n):\n    raise UsageError(f"--max-shard-size must be positive, not {n}")\n'
    built = 'e = BigmodelError("use --force to replace it")\n'
    found = flags_in_raised_messages({"bigmodel_cli.sharding": bad, "bigmodel_cli.x": built})
    assert len(found) == 2
    assert not flags_in_raised_messages({"bigmodel_cli.cli": bad, "bigmodel_cli.render.x": bad})


# ---------------------------------------------------------------- small inits, short signatures

MAX_INIT_LINES = 60
MAX_PARAMETERS = 8
# Not yet records (run/): drop each once it is.


def long_inits(sources: Mapping[str, str]) -> dict[str, int]:
    """``{file: source}`` -> the ``__init__.py`` files over the limit, with their lines."""
    return {
        name: n
        for name, source in sources.items()
        if name.endswith("__init__.py") and (n := len(source.splitlines())) > MAX_INIT_LINES
    }


def test_package_inits_only_name_their_verbs() -> None:
    """An ``__init__.py`` re-exports and holds the stage's public verbs: 60 lines at most."""
    inits = {str(p.relative_to(PACKAGE)): p.read_text() for p in PACKAGE.rglob("__init__.py")}
    assert len(inits) > 5
    assert not long_inits(inits)


def test_a_long_init_would_be_found() -> None:
    assert long_inits({"x/__init__.py": "x = 1\n" * 61}) == {"x/__init__.py": 61}
    assert not long_inits({"x/__init__.py": "x = 1\n" * 60, "y.py": "y = 1\n" * 99})


def _is_command(node: ast.FunctionDef | ast.AsyncFunctionDef) -> bool:
    """A typer command (``@app.command()``): its parameters are the command's flags."""
    return any(
        isinstance(d, ast.Call) and getattr(d.func, "attr", None) == "command"
        for d in node.decorator_list
    )


def long_signatures(sources: Mapping[str, str]) -> list[str]:
    found = []
    for module, source in sources.items():
        for node in ast.walk(ast.parse(source)):
            if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            args = node.args
            named = [*args.posonlyargs, *args.args, *args.kwonlyargs]
            count = len([a for a in named if a.arg not in ("self", "cls")])
            cli = module.split(".")[-1].startswith("cli") and _is_command(node)
            where = f"{module}.{node.name}"
            if count > MAX_PARAMETERS and not cli:
                found.append(f"{where}: {count} parameters")
    return found


def test_no_function_takes_more_than_eight_parameters() -> None:
    """A longer list is a record waiting to be named (the CLI's commands excepted)."""
    sources = {name: p.read_text() for name, p in modules().items()}
    assert not long_signatures(sources)


def test_a_long_signature_would_be_found() -> None:
    nine = ", ".join(f"a{i}" for i in range(9))
    command = f"@app.command()\ndef plan({nine}): pass\n"
    assert long_signatures({"bigmodel_cli.x": f"def f({nine}): pass\n"}) == [
        "bigmodel_cli.x.f: 9 parameters"
    ]
    assert long_signatures({"bigmodel_cli.x": f"def f(self, {nine[4:]}): pass\n"}) == []
    assert long_signatures({"bigmodel_cli.cli": command}) == []
    assert long_signatures({"bigmodel_cli.x": command}) != []
