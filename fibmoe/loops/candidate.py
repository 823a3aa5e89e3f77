"""A candidate kernel: its source files, how a model's reply changes them, and the static checks.

A candidate is a flat set of source files (packed name -> text) with one entry file whose `run` the
harness calls. The model answers either with whole files or with SEARCH/REPLACE edits; a reply that
cannot be applied is a `CandidateError` whose message the model reads next turn. The static checks
enforce the contest's rules before anything runs, each problem with its reason.
"""

from __future__ import annotations

import ast
import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path

from .. import variants

# Kernel libraries the contest forbids calling at run time (and `triton_kernels`, Triton's own MoE kernels).
KERNEL_LIBRARIES = {
    "flashinfer": "FlashInfer is the baseline itself",
    "deep_gemm": "DeepGEMM is a kernel library",
    "deep_ep": "DeepEP is a kernel library",
    "vllm": "vLLM ships its own MoE kernels",
    "sglang": "SGLang ships its own MoE kernels",
    "sgl_kernel": "sgl-kernel is a kernel library",
    "flash_attn": "flash-attn is a kernel library",
    "xformers": "xformers is a kernel library",
    "tensorrt_llm": "TensorRT-LLM is a kernel library",
    "transformer_engine": "Transformer Engine is a kernel library",
    "cutlass": "CUTLASS's Python package is a kernel library",
    "triton_kernels": "triton_kernels ships ready-made MoE kernels",
    "torchao": "torchao ships FP8 kernels",
    "fbgemm_gpu": "FBGEMM is a kernel library",
    "aiter": "AITER is a kernel library",
    "liger_kernel": "Liger is a kernel library",
    "bitsandbytes": "bitsandbytes is a kernel library",
    "apex": "Apex is a kernel library",
}
# Modules whose only use in a kernel would be file, process or network access, or loading binaries.
IO_MODULES = {
    "socket",
    "ssl",
    "http",
    "urllib",
    "urllib3",
    "requests",
    "httpx",
    "aiohttp",
    "ftplib",
    "smtplib",
    "subprocess",
    "multiprocessing",
    "shutil",
    "tempfile",
    "pathlib",
    "glob",
    "pickle",
    "shelve",
    "sqlite3",
    "ctypes",
    "importlib",
}
IO_CALLS = {"open", "exec", "eval", "compile", "__import__"}
IO_ATTRIBUTES = {  # module.function calls that touch files, processes or binaries
    "os": {
        "system",
        "popen",
        "open",
        "remove",
        "unlink",
        "rename",
        "replace",
        "listdir",
        "scandir",
        "walk",
        "makedirs",
        "mkdir",
        "rmdir",
        "fork",
        "kill",
        "execv",
        "execve",
        "execvp",
        "spawnv",
        "startfile",
    },
    "torch": {"load", "save"},
    "numpy": {"load", "save", "fromfile", "loadtxt"},
    "np": {"load", "save", "fromfile", "loadtxt"},
}
CACHE_DECORATORS = {"cache", "lru_cache"}
N_ARGS = 11  # the 10 inputs in the definition's order, then `output` (destination-passing style)


class CandidateError(Exception):
    """A reply that cannot become a candidate; the message is shown to the model next turn."""


@dataclass
class Candidate:
    files: dict[str, str]  # packed name -> source text
    entry_file: str
    entry: str = "run"
    notes: list[str] = field(default_factory=list)  # what applying the reply reported (e.g. files replaced)

    @property
    def language(self) -> str:
        return "triton" if any(variants_import_triton(t) for t in self.files.values()) else "python"

    def digest(self) -> str:
        h = hashlib.sha256()
        for name in sorted(self.files):
            h.update(name.encode() + b"\0" + self.files[name].encode() + b"\0")
        return h.hexdigest()[:12]

    def write(self, folder: Path, name: str, description: str) -> Path:
        """The candidate as a self-contained variant folder (variant.toml included)."""
        folder.mkdir(parents=True, exist_ok=True)
        for old in folder.glob("*.py"):
            old.unlink()
        for fname, text in self.files.items():
            (folder / fname).write_text(text)
        triton = self.language == "triton"
        spec = variants.VariantSpec(
            name=name,
            language=self.language,
            entry_point=f"{self.entry_file}::{self.entry}",
            destination_passing_style=True,
            changes=description,
            description=description,
            target_hardware=["cuda"] if triton else ["cuda", "cpu"],
            dependencies=["torch", "triton"] if triton else ["torch"],
        )
        (folder / variants.SPEC_FILE).write_text(variants.spec_toml(spec))
        return folder


def variants_import_triton(text: str) -> bool:
    return bool(re.search(r"^\s*(import\s+triton\b|from\s+triton\b)", text, re.MULTILINE))


def from_variant(v: variants.Variant) -> Candidate:
    """The sources a variant packs (its own and its shared files, flat), as a candidate."""
    files = {name: path.read_text() for name, path in v.source_files().items() if name.endswith(".py")}
    entry_file, entry = v.spec.entry_point.split("::")
    return Candidate(files=files, entry_file=entry_file, entry=entry)


def load_folder(folder: Path) -> Candidate:
    return from_variant(variants.load_variant(folder))


# ---- applying a reply ---------------------------------------------------------------------------

FILE_HEADER = re.compile(r"^(?:#+\s*)?FILE:\s*`?([A-Za-z0-9_.-]+\.py)`?\s*$", re.MULTILINE)
FENCE = re.compile(r"```[a-zA-Z0-9_+-]*[^\n]*\n(.*?)```", re.DOTALL)
EDIT = re.compile(r"<<<<<<< SEARCH[^\n]*\n(.*?)\n?=======\n(.*?)\n?>>>>>>> REPLACE", re.DOTALL)


def apply_reply(base: Candidate, reply: str) -> Candidate:
    """A new candidate from a reply: whole files (`FILE: name.py` then a fenced block) and/or
    SEARCH/REPLACE edits (after a `FILE:` line, else on the entry file). Raises CandidateError."""
    if not reply or not reply.strip():
        raise CandidateError("the reply was empty")
    files = dict(base.files)
    notes: list[str] = []
    sections = _sections(reply, base.entry_file)
    changed = False
    for fname, body in sections:
        if "<<<<<<< SEARCH" in body:
            if fname not in files:
                raise CandidateError(f"edits for {fname}, which is not one of the files ({', '.join(sorted(files))})")
            files[fname] = _apply_edits(files[fname], body, fname)
            notes.append(f"edited {fname}")
            changed = True
            continue
        fence = FENCE.search(body)
        if fence and (fname != base.entry_file or len(sections) > 1 or _looks_like_kernel(fence.group(1), base)):
            files[fname] = fence.group(1)
            notes.append(f"replaced {fname}")
            changed = True
    if not changed:
        raise CandidateError(
            "no change found in the reply: give SEARCH/REPLACE blocks, or a whole file as a `FILE: name.py` "
            "line followed by a ```python fenced block"
        )
    new = Candidate(files=files, entry_file=base.entry_file, entry=base.entry, notes=notes)
    if new.files == base.files:
        raise CandidateError("the reply leaves every file as it was")
    return new


def _sections(reply: str, default_file: str) -> list[tuple[str, str]]:
    """(file name, text) pieces: what precedes the first FILE: line belongs to the entry file."""
    marks = list(FILE_HEADER.finditer(reply))
    pieces = [(default_file, reply[: marks[0].start()] if marks else reply)]
    for i, m in enumerate(marks):
        end = marks[i + 1].start() if i + 1 < len(marks) else len(reply)
        pieces.append((m.group(1), reply[m.end() : end]))
    return [(f, t) for f, t in pieces if t.strip()]


def _looks_like_kernel(code: str, base: Candidate) -> bool:
    """A lone fenced block with no FILE: line replaces the entry file only if it defines the entry."""
    return re.search(rf"^def\s+{re.escape(base.entry)}\s*\(", code, re.MULTILINE) is not None


def _apply_edits(text: str, body: str, fname: str) -> str:
    blocks = EDIT.findall(body)
    if body.count("<<<<<<< SEARCH") != len(blocks):
        raise CandidateError(
            f"{fname}: a SEARCH block is malformed (each needs '<<<<<<< SEARCH', '=======' and '>>>>>>> REPLACE' "
            "on their own lines)"
        )
    for i, (search, replace) in enumerate(blocks, 1):
        if not search.strip():
            raise CandidateError(f"{fname}: SEARCH block {i} is empty")
        count = text.count(search)
        if count == 0:
            raise CandidateError(
                f"{fname}: SEARCH block {i} does not match the file exactly (first line: {search.splitlines()[0]!r})"
            )
        if count > 1:
            raise CandidateError(f"{fname}: SEARCH block {i} matches {count} places; include more lines")
        text = text.replace(search, replace, 1)
    return text


# ---- static checks ------------------------------------------------------------------------------


def static_problems(c: Candidate) -> list[str]:
    """Every rule the candidate breaks, each with its reason; [] when it may run."""
    problems: list[str] = []
    trees = {}
    for fname, text in sorted(c.files.items()):
        try:
            trees[fname] = ast.parse(text, filename=fname)
        except SyntaxError as e:
            problems.append(f"{fname}:{e.lineno}: syntax error: {e.msg}")
    for fname, tree in trees.items():
        problems += [f"{fname}:{p}" for p in _imports_and_calls(tree, c.files)]
    if c.entry_file in trees:
        problems += [f"{c.entry_file}:{p}" for p in _entry_problems(trees[c.entry_file], c.entry)]
    elif c.entry_file not in c.files:
        problems.append(f"the entry file {c.entry_file} is missing")
    return problems


def _root(name: str) -> str:
    return name.split(".")[0]


def _imports_and_calls(tree: ast.AST, files: dict[str, str]) -> list[str]:
    problems = []
    aliases: dict[str, str] = {}  # local name -> module root
    for node in ast.walk(tree):
        mods = []
        if isinstance(node, ast.Import):
            for a in node.names:
                mods.append(a.name)
                aliases[a.asname or _root(a.name)] = _root(a.name)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            mods.append(node.module)
        elif isinstance(node, ast.ImportFrom) and node.level > 0 and node.module:
            if f"{node.module.split('.')[0]}.py" not in files:
                problems.append(f"{node.lineno}: imports .{node.module}, which is not one of the candidate's files")
        for m in mods:
            root = _root(m)
            if root in KERNEL_LIBRARIES:
                problems.append(
                    f"{node.lineno}: imports {m}: the contest forbids kernel libraries ({KERNEL_LIBRARIES[root]})"
                )
            elif root in IO_MODULES:
                problems.append(f"{node.lineno}: imports {m}: no file, process or network access in a kernel")
            elif root == "fibmoe":
                problems.append(f"{node.lineno}: imports {m}: the contest runs the kernel without fibmoe")
        if isinstance(node, ast.Call):
            f = node.func
            if isinstance(f, ast.Name) and f.id in IO_CALLS:
                problems.append(f"{node.lineno}: calls {f.id}(): no file access or dynamic code in a kernel")
            elif isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name):
                mod = aliases.get(f.value.id, f.value.id)
                if f.attr in IO_ATTRIBUTES.get(mod, ()) or f.attr in IO_ATTRIBUTES.get(f.value.id, ()):
                    problems.append(f"{node.lineno}: calls {f.value.id}.{f.attr}(): no file or process access")
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for d in node.decorator_list:
                target = d.func if isinstance(d, ast.Call) else d
                name = target.attr if isinstance(target, ast.Attribute) else getattr(target, "id", "")
                if name in CACHE_DECORATORS:
                    problems.append(
                        f"{node.lineno}: @{name} on {node.name}(): memoized results are state kept between calls, "
                        "which the contest forbids (cache compiled kernels or scratch buffers in a dict instead)"
                    )
    return problems


def _entry_problems(tree: ast.Module, entry: str) -> list[str]:
    fn = next((n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == entry), None)
    if fn is None:
        return [f" no top-level function {entry}(): the harness calls {entry}(10 inputs..., output)"]
    a = fn.args
    positional = a.posonlyargs + a.args
    required_kw = [k.arg for k, d in zip(a.kwonlyargs, a.kw_defaults, strict=True) if d is None]
    problems = []
    if len(positional) != N_ARGS or a.vararg or required_kw:
        problems.append(
            f"{fn.lineno}: {entry}() takes {len(positional)} positional parameters; the harness passes exactly "
            f"{N_ARGS}: the 10 inputs in the definition's order, then `output` (destination-passing style)"
        )
        return problems
    inputs = {p.arg for p in positional}
    out_name = positional[-1].arg
    module_names = _module_level_names(tree)
    for node in ast.walk(fn):
        problems += _state_problem(node, out_name, inputs, module_names)
    return problems


def _module_level_names(tree: ast.Module) -> set[str]:
    names = set()
    for node in tree.body:
        targets = node.targets if isinstance(node, ast.Assign) else [getattr(node, "target", None)]
        for t in targets:
            if isinstance(t, ast.Name):
                names.add(t.id)
    return names


def _mentions(node: ast.AST, names: set[str]) -> bool:
    return any(isinstance(n, ast.Name) and n.id in names for n in ast.walk(node))


def _base_name(node: ast.AST):
    while isinstance(node, (ast.Subscript, ast.Attribute)):
        node = node.value
    return node.id if isinstance(node, ast.Name) else None


def _state_problem(node, out_name: str, inputs: set[str], module_names: set[str]) -> list[str]:
    """Results kept between calls: the output stored into module-level state, or filled from it."""
    why = "results kept between calls are forbidden by the contest (scratch buffers are fine)"
    if isinstance(node, ast.Assign):
        for t in node.targets:
            stores_output = _mentions(node.value, {out_name})
            if isinstance(t, (ast.Subscript, ast.Attribute)) and _base_name(t) in module_names and stores_output:
                return [f"{node.lineno}: stores `{out_name}` into module-level {_base_name(t)}: {why}"]
            if (
                isinstance(t, ast.Subscript)
                and _base_name(t) == out_name
                and _base_name(node.value) in module_names
                and not _mentions(node.value, inputs)
            ):
                return [f"{node.lineno}: fills `{out_name}` from module-level {_base_name(node.value)}: {why}"]
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
        owner = _base_name(node.func.value)
        args = node.args
        if node.func.attr in {"append", "update", "setdefault", "add"} and owner in module_names:
            if any(_mentions(x, {out_name}) for x in args):
                return [f"{node.lineno}: keeps `{out_name}` in module-level {owner}: {why}"]
        if node.func.attr == "copy_" and owner == out_name and args:
            src = args[0]
            if _base_name(src) in module_names and not _mentions(src, inputs):
                return [f"{node.lineno}: copies module-level {_base_name(src)} into `{out_name}`: {why}"]
    return []
