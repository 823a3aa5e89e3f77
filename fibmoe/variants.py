"""Variants: a folder of sources plus `variant.toml`, packed into a flashinfer-bench Solution.

A variant folder holds only what makes that rung different; code that several rungs share is
named in `shared` (paths from the repository root) and packed beside the folder's own files,
flat, the way flashinfer-bench writes a solution's sources into one importable package.
"""

from __future__ import annotations

import json
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional

import tomllib
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from . import REPO_ROOT, files
from .errors import FibmoeError

VARIANTS_DIR = REPO_ROOT / "variants"
SPEC_FILE = "variant.toml"
SOURCE_SUFFIXES = {".py", ".cu", ".cuh", ".cpp", ".cc", ".h", ".hpp"}
AUTHOR = "fibmoe"


class VariantSpec(BaseModel):
    """The contents of `variant.toml`."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_.-]*$")
    rung: Optional[int] = Field(default=None, ge=1, description="place on the ladder; none when unpacked")
    language: Literal["python", "triton", "cuda", "cpp", "tilelang"]
    entry_point: str = Field(pattern=r"^[^:]+\.py::[A-Za-z_][A-Za-z0-9_]*$")
    destination_passing_style: bool = True
    changes: str = ""
    description: str = Field(min_length=1)
    target_hardware: list[str] = Field(min_length=1)
    dependencies: list[str] = Field(default_factory=list)
    shared: list[str] = Field(default_factory=list)

    @field_validator("shared")
    @classmethod
    def _shared_files_exist(cls, paths: list[str]) -> list[str]:
        for p in paths:
            if not (REPO_ROOT / p).is_file():
                raise ValueError(f"shared file {p!r} does not exist under the repository root")
        return paths


class Variant(BaseModel):
    spec: VariantSpec
    path: Path

    @property
    def name(self) -> str:
        return self.spec.name

    def source_files(self) -> dict[str, Path]:
        """Packed path -> file: the folder's top-level sources, then the shared ones."""
        files = {p.name: p for p in sorted(self.path.iterdir()) if p.is_file() and p.suffix in SOURCE_SUFFIXES}
        for rel in self.spec.shared:
            src = REPO_ROOT / rel
            if src.name in files:
                raise FibmoeError(f"variant {self.name}: shared file {rel} collides with {files[src.name]}")
            files[src.name] = src
        entry = self.spec.entry_point.split("::")[0]
        if entry not in files:
            raise FibmoeError(f"variant {self.name}: entry file {entry} is not among its sources")
        return dict(sorted(files.items()))


def load_spec(path: Path) -> VariantSpec:
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise FibmoeError(f"{path}: cannot read variant spec: {e}") from None
    try:
        return VariantSpec.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        field = ".".join(str(x) for x in err["loc"]) or "(spec)"
        raise FibmoeError(f"{path}: field '{field}': {err['msg']}") from None


def load_variant(folder: Path) -> Variant:
    spec_path = folder / SPEC_FILE
    if not spec_path.is_file():
        raise FibmoeError(f"{folder} is not a variant: it has no {SPEC_FILE}")
    return Variant(spec=load_spec(spec_path), path=folder)


@dataclass(frozen=True)
class BrokenVariant:
    """A folder under variants/ that cannot be used as it stands: reported, never in the way of the others."""

    path: Path
    error: str
    name: str  # the spec's name when it could be read, else the folder's name with _ as -


def scan(variants_dir: Path | None = None) -> tuple[list[Variant], list[BrokenVariant]]:
    """Every folder under `variants_dir` (default: the repository's variants/) with a spec: the usable
    variants by rung then name, and the broken ones (a bad spec, or a name two folders share)."""
    variants_dir = variants_dir or VARIANTS_DIR
    loaded, broken = [], []
    for spec_path in sorted(variants_dir.glob(f"*/{SPEC_FILE}")):
        try:
            loaded.append(load_variant(spec_path.parent))
        except FibmoeError as e:
            broken.append(BrokenVariant(spec_path.parent, str(e), spec_path.parent.name.replace("_", "-")))
    by_name: dict[str, list[Variant]] = {}
    for v in loaded:
        by_name.setdefault(v.name, []).append(v)
    usable = []
    for name, same in by_name.items():
        if len(same) == 1:
            usable.append(same[0])
            continue
        folders = ", ".join(str(v.path) for v in same)
        why = f"variant name {name!r} is used by {len(same)} folders ({folders}): rename all but one in {SPEC_FILE}"
        broken += [BrokenVariant(v.path, why, name) for v in same]
    usable.sort(key=lambda v: (v.spec.rung is None, v.spec.rung or 0, v.name))
    return usable, sorted(broken, key=lambda b: b.path)


def discover(variants_dir: Path | None = None) -> list[Variant]:
    """The usable variants under `variants_dir`, by rung then name (`scan` also gives the broken ones)."""
    return scan(variants_dir)[0]


def resolve(names: list[str], variants_dir: Path | None = None) -> list[Variant]:
    """Variants by name or folder path; all usable ones when `names` is empty. Naming a broken variant
    is its error; a broken variant that is not named is no one's business here."""
    usable, broken = scan(variants_dir)
    if not names:
        return usable
    by_name = {v.name: v for v in usable}
    broken_by_name = {b.name: b for b in broken}
    chosen = []
    for name in names:
        if name in by_name:
            chosen.append(by_name[name])
        elif name in broken_by_name:
            raise FibmoeError(broken_by_name[name].error)
        elif Path(name).is_dir():
            chosen.append(load_variant(Path(name)))
        else:
            known = ", ".join(by_name) or "none"
            raise FibmoeError(f"unknown variant {name!r} (known: {known})")
    return chosen


def pack(variant: Variant, definition: str):
    """The variant as a flashinfer-bench Solution, validated by flashinfer-bench's own models."""
    from flashinfer_bench import BuildSpec, Solution, SourceFile

    spec = variant.spec
    try:
        return Solution(
            name=spec.name,
            definition=definition,
            author=AUTHOR,
            description=spec.description,
            spec=BuildSpec(
                language=spec.language,
                target_hardware=spec.target_hardware,
                entry_point=spec.entry_point,
                dependencies=spec.dependencies,
                destination_passing_style=spec.destination_passing_style,
            ),
            sources=[SourceFile(path=p, content=f.read_text()) for p, f in variant.source_files().items()],
        )
    except ValidationError as e:
        raise FibmoeError(f"variant {spec.name} does not pack into a valid Solution: {e.errors()[0]['msg']}") from None


# Our own fields of variant.toml (what a Solution has no place for) travel in the Solution JSON under
# this key, so that unpack gives back the spec that was packed; flashinfer-bench's models ignore it.
PACKED_SPEC_KEY = "fibmoe_variant"


def solution_json(solution, variant: Variant | None = None) -> str:
    data = solution.model_dump(mode="json", exclude_none=True)
    if variant is not None:
        spec = variant.spec
        data[PACKED_SPEC_KEY] = {"rung": spec.rung, "changes": spec.changes, "shared": spec.shared}
    return json.dumps(data, indent=2) + "\n"


def solution_from_json(text: str):
    from flashinfer_bench import Solution

    return Solution.model_validate_json(text)


def read_solution(path: Path):
    return read_packed(path)[0]


def read_packed(path: Path) -> tuple:
    """(the Solution, our spec fields packed beside it: {} when the file was not written by `pack`)."""
    try:
        text = Path(path).read_text()
        solution = solution_from_json(text)
    except OSError as e:
        raise FibmoeError(f"cannot read {path}: {e.strerror}") from None
    except UnicodeDecodeError:
        raise FibmoeError(f"{path} is not a valid Solution: not UTF-8 text") from None
    except ValidationError as e:
        err = e.errors()[0]
        raise FibmoeError(f"{path} is not a valid Solution: {'.'.join(map(str, err['loc']))}: {err['msg']}") from None
    packed = json.loads(text).get(PACKED_SPEC_KEY)
    return solution, packed if isinstance(packed, dict) else {}


def unpack(
    solution,
    folder: Path,
    force: bool = False,
    packed: dict | None = None,
    name: str | None = None,
    variants_dir: Path | None = None,
) -> Variant:
    """Write a Solution's sources and a variant.toml into `folder`; packing it gives the same Solution.

    `packed` (from `read_packed`) restores rung, changes and shared files: a shared file whose content
    equals the repository's stays shared, any other is written into the folder. `name` renames (a copy
    then has no rung). Into variants/, a name another variant has is refused. A failed write leaves
    nothing behind, so a retry starts clean."""
    packed = packed or {}
    new_name = name or solution.name
    if folder.exists() and not folder.is_dir():
        raise FibmoeError(f"{folder} exists and is not a folder")
    if folder.exists() and any(folder.iterdir()) and not force:
        raise FibmoeError(f"{folder} exists and is not empty (use --force to overwrite)")
    for src in solution.sources:
        if len(Path(src.path).parts) != 1:
            raise FibmoeError(f"source {src.path} is in a sub-folder; variants hold top-level files only")
    variants_dir = variants_dir or VARIANTS_DIR
    if folder.resolve().parent == variants_dir.resolve():
        usable, broken = scan(variants_dir)
        taken = [v.path for v in (*usable, *broken) if v.name == new_name and v.path.resolve() != folder.resolve()]
        if taken:
            raise FibmoeError(f"a variant named {new_name!r} already exists ({taken[0]}): unpack with --name NEW-NAME")
    contents = {src.path: src.content for src in solution.sources}
    listed = packed.get("shared") if isinstance(packed.get("shared"), list) else []
    shared = [p for p in listed if isinstance(p, str) and _same_file(REPO_ROOT / p, contents.get(Path(p).name))]
    own = {p: text for p, text in contents.items() if p not in {Path(rel).name for rel in shared}}
    try:
        spec = VariantSpec(
            name=new_name,
            rung=packed.get("rung") if new_name == solution.name else None,
            language=solution.spec.language.value,
            entry_point=solution.spec.entry_point,
            destination_passing_style=solution.spec.destination_passing_style,
            changes=packed.get("changes") or "",
            description=solution.description or solution.name,
            target_hardware=solution.spec.target_hardware,
            dependencies=solution.spec.dependencies,
            shared=shared,
        )
    except ValidationError as e:
        err = e.errors()[0]
        field = ".".join(str(x) for x in err["loc"]) or "(spec)"
        raise FibmoeError(f"cannot unpack as {new_name!r}: field '{field}': {err['msg']}") from None
    _write_folder(folder, {**own, SPEC_FILE: spec_toml(spec)})
    return Variant(spec=spec, path=folder)


def _same_file(path: Path, content: str | None) -> bool:
    try:
        return content is not None and path.is_file() and path.read_text() == content
    except (OSError, UnicodeDecodeError):
        return False


def _write_folder(folder: Path, contents: dict[str, str]) -> None:
    """Write every file (each atomically) or, on failure, remove what this call created."""
    made_folder = not folder.exists()
    created = []
    try:
        folder.mkdir(parents=True, exist_ok=True)
        for rel, text in contents.items():
            path = folder / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            existed = path.exists()
            files.write_text(path, text)
            if not existed:
                created.append(path)
    except OSError as e:
        if made_folder:
            shutil.rmtree(folder, ignore_errors=True)
        else:
            for path in created:
                path.unlink(missing_ok=True)
        where = e.filename or folder
        raise FibmoeError(f"cannot write {where}: {e.strerror or e}; nothing was left behind") from None


def spec_toml(spec: VariantSpec) -> str:
    lines = []
    for key, value in spec.model_dump(exclude_none=True).items():
        lines.append(f"{key} = {json.dumps(value)}")  # JSON strings, lists and bools are valid TOML
    return "\n".join(lines) + "\n"


def scaffold(name: str, source: Variant, variants_dir: Path | None = None) -> Variant:
    """A new variant folder copied from `source`, renamed, with no place on the ladder yet."""
    folder = (variants_dir or VARIANTS_DIR) / name.replace("-", "_")
    if folder.exists():
        raise FibmoeError(f"{folder} already exists")
    try:
        spec = source.spec.model_copy(update={"name": name, "rung": None})
        VariantSpec.model_validate(spec.model_dump())
    except ValidationError as e:
        raise FibmoeError(f"bad variant name {name!r}: {e.errors()[0]['msg']}") from None
    try:
        shutil.copytree(source.path, folder, ignore=shutil.ignore_patterns("__pycache__", "NOTES.md"))
        files.write_text(folder / SPEC_FILE, spec_toml(spec))
    except OSError as e:
        shutil.rmtree(folder, ignore_errors=True)
        raise FibmoeError(f"cannot create {folder}: {e.strerror or e}; nothing was left behind") from None
    return Variant(spec=spec, path=folder)


def build(solution, definition):
    """Load a Solution exactly as flashinfer-bench does: its builder registry, its entry convention."""
    from flashinfer_bench.compile import BuilderRegistry

    try:
        runnable = BuilderRegistry.get_instance().build(definition, solution)
    except Exception as e:  # a build error is the solution's fault: report it, do not crash
        raise FibmoeError(
            f"{solution.name}: build failed: {str(e).splitlines()[0] if str(e) else type(e).__name__}"
        ) from None
    return runnable


def module_of(runnable):
    """The imported entry module of a built Python/Triton solution (for optional hooks like `route`)."""
    return sys.modules.get(runnable.metadata.misc.get("module_name", ""))


def write_starter_kit(solution, folder: Path, variant: Variant | None = None) -> None:
    """A submission repository in the starter kit's shape: config.toml, solution/<language>/...,
    and packed_solution.json (which the kit's runner prefers over the sources when present)."""
    lang = solution.spec.language.value
    config = (
        "[solution]\n"
        f"name = {json.dumps(solution.name)}\n"
        f"definition = {json.dumps(solution.definition)}\n"
        f"author = {json.dumps(solution.author)}\n\n"
        "[build]\n"
        f"language = {json.dumps(lang)}\n"
        f"entry_point = {json.dumps(solution.spec.entry_point)}\n"
        f"destination_passing_style = {str(solution.spec.destination_passing_style).lower()}\n"
    )
    contents = {"config.toml": config, **{f"solution/{lang}/{src.path}": src.content for src in solution.sources}}
    _write_folder(folder, {**contents, "packed_solution.json": solution_json(solution, variant)})
