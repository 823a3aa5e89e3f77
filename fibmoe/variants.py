"""Variants: a folder of sources plus `variant.toml`, packed into a flashinfer-bench Solution.

A variant folder holds only what makes that rung different; code that several rungs share is
named in `shared` (paths from the repository root) and packed beside the folder's own files,
flat, the way flashinfer-bench writes a solution's sources into one importable package.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Literal, Optional

import tomllib
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from . import REPO_ROOT
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


def discover(variants_dir: Path | None = None) -> list[Variant]:
    """Every variant under `variants_dir` (default: the repository's variants/), by rung then name."""
    variants_dir = variants_dir or VARIANTS_DIR
    found = [load_variant(p.parent) for p in sorted(variants_dir.glob(f"*/{SPEC_FILE}"))]
    return sorted(found, key=lambda v: (v.spec.rung is None, v.spec.rung or 0, v.name))


def resolve(names: list[str], variants_dir: Path | None = None) -> list[Variant]:
    """Variants by name or folder path; all of them when `names` is empty."""
    if not names:
        return discover(variants_dir)
    by_name = {v.name: v for v in discover(variants_dir)}
    chosen = []
    for name in names:
        if name in by_name:
            chosen.append(by_name[name])
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


def solution_json(solution) -> str:
    return json.dumps(solution.model_dump(mode="json", exclude_none=True), indent=2) + "\n"


def solution_from_json(text: str):
    from flashinfer_bench import Solution

    return Solution.model_validate_json(text)


def read_solution(path: Path):
    try:
        return solution_from_json(Path(path).read_text())
    except OSError as e:
        raise FibmoeError(f"cannot read {path}: {e.strerror}") from None
    except ValidationError as e:
        err = e.errors()[0]
        raise FibmoeError(f"{path} is not a valid Solution: {'.'.join(map(str, err['loc']))}: {err['msg']}") from None


def unpack(solution, folder: Path, force: bool = False) -> Variant:
    """Write a Solution's sources and a variant.toml into `folder`; packing it gives the same Solution."""
    if folder.exists() and any(folder.iterdir()) and not force:
        raise FibmoeError(f"{folder} exists and is not empty (use --force to overwrite)")
    for src in solution.sources:
        if len(Path(src.path).parts) != 1:
            raise FibmoeError(f"source {src.path} is in a sub-folder; variants hold top-level files only")
    spec = VariantSpec(
        name=solution.name,
        language=solution.spec.language.value,
        entry_point=solution.spec.entry_point,
        destination_passing_style=solution.spec.destination_passing_style,
        description=solution.description or solution.name,
        target_hardware=solution.spec.target_hardware,
        dependencies=solution.spec.dependencies,
    )
    folder.mkdir(parents=True, exist_ok=True)
    for src in solution.sources:
        (folder / src.path).write_text(src.content)
    (folder / SPEC_FILE).write_text(spec_toml(spec))
    return Variant(spec=spec, path=folder)


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
    shutil.copytree(source.path, folder, ignore=shutil.ignore_patterns("__pycache__", "NOTES.md"))
    (folder / SPEC_FILE).write_text(spec_toml(spec))
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


def write_starter_kit(solution, folder: Path) -> None:
    """A submission repository in the starter kit's shape: config.toml, solution/<language>/...,
    and packed_solution.json (which the kit's runner prefers over the sources when present)."""
    lang = solution.spec.language.value
    folder.mkdir(parents=True, exist_ok=True)
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
    (folder / "config.toml").write_text(config)
    src_dir = folder / "solution" / lang
    src_dir.mkdir(parents=True, exist_ok=True)
    for src in solution.sources:
        (src_dir / src.path).write_text(src.content)
    (folder / "packed_solution.json").write_text(solution_json(solution))
