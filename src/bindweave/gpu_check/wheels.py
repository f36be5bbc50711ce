"""The packages a CUDA node's own Python lacks, carried as wheels: download them here, install them there.

A typical offline GPU node has PyTorch, transformers, peft, accelerate, safetensors, numpy, pillow,
opencv and pytest, but none of the packages below. ``make gpu-wheels`` (:func:`download`) fetches them on a
machine with the package registries, as x86-64 manylinux wheels for CPython 3.12, ``--no-deps`` (their own
dependencies are on such nodes). On the node, :func:`ensure_packages` installs the missing ones with
``pip --no-index --no-deps --target`` into a temporary folder, nothing from the network.

Standard library only: this runs before any of them can be imported.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "DEFAULT_WHEEL_DIR",
    "MAX_WHEEL_BYTES",
    "WHEELS",
    "Wheel",
    "WheelError",
    "download",
    "ensure_packages",
    "missing_wheels",
    "unmet_requirements",
]

DEFAULT_WHEEL_DIR = Path("wheels/gpu")
MAX_WHEEL_BYTES = 64 * 2**20  # what a device call carries at most, the repository included
PYTHON_VERSION = "3.12"
# pip matches a manylinux tag exactly: the tags the wheels below are published with.
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64")


@dataclass(frozen=True)
class Wheel:
    """One carried distribution: the version this project is tested with, and why the GPU check needs it."""

    name: str  # the distribution's name on the registry
    version: str
    module: str  # what ``import`` finds once installed
    why: str


WHEELS = (
    Wheel(
        "diffusers", "0.42.1", "diffusers", "the Wan DiT, VAE, schedulers and offload/cache hooks we build on"
    ),
    Wheel(
        "av",
        "18.1.0",
        "av",
        "video files (bindweave.io.video, training clips): imported by generation, training and tests",
    ),
    Wheel("ftfy", "6.3.1", "ftfy", "prompt cleaning, as Wan's prompt_clean does it (diffusers imports it)"),
    Wheel("wcwidth", "0.9.4", "wcwidth", "ftfy's one dependency"),
)
# Declared requirements that are never imported on Python >= 3.10, so a node may lack them.
UNUSED_REQUIREMENTS = {
    "importlib-metadata": "diffusers declares it but imports it only on Python < 3.8 (diffusers/utils/import_utils.py)",
}


class WheelError(ValueError):
    """A needed package is neither importable nor in the wheel folder (the message says how to get it)."""


def missing_wheels(wheels: tuple[Wheel, ...] = WHEELS) -> list[Wheel]:
    """The wheels whose module this Python cannot import."""
    return [wheel for wheel in wheels if importlib.util.find_spec(wheel.module) is None]


def ensure_packages(wheel_dir: Path, target: Path, wheels: tuple[Wheel, ...] = WHEELS) -> list[Wheel]:
    """Install the missing ``wheels`` from ``wheel_dir`` into ``target`` and put it on the import path.

    Returns the installed ones (none when everything is importable). ``target`` is also prepended to
    ``PYTHONPATH`` so that subprocesses (pytest, torchrun) see the same packages. A package neither
    importable nor found in ``wheel_dir`` raises :class:`WheelError` naming each one and the command
    that downloads them.
    """
    missing = missing_wheels(wheels)
    if not missing:
        return []
    files = [_find_wheel(wheel_dir, wheel) for wheel in missing]
    absent = [wheel for wheel, file in zip(missing, files, strict=True) if file is None]
    if absent:
        listing = "; ".join(f"{w.name}=={w.version} ({w.why})" for w in absent)
        raise WheelError(f"missing Python packages, and no wheel for them in {wheel_dir}: {listing}. {_HOW}")
    unmet = unmet_requirements([file for file in files if file is not None])
    if unmet:
        raise WheelError(
            f"the wheels in {wheel_dir} need packages this Python lacks: {'; '.join(unmet)}. {_HOW}"
        )
    target.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "pip", "install", "--quiet", "--no-index", "--no-deps", "--no-compile"]
    subprocess.run([*command, "--target", str(target), *map(str, files)], check=True)
    sys.path.insert(0, str(target))
    importlib.invalidate_caches()
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(target), os.environ.get("PYTHONPATH")]))
    return missing


_HOW = (
    "On a machine with the package registries, run `make gpu-wheels` (or `python3 -m bindweave.gpu_check.wheels "
    "--dest FOLDER`), add a wheel for any other missing package, and copy the folder here."
)


def unmet_requirements(files: list[Path]) -> list[str]:
    """``"<wheel> needs <requirement> (<what is installed>)"`` for each requirement of ``files`` that neither
    this Python nor another of ``files`` meets (extras, non-matching environment markers and
    :data:`UNUSED_REQUIREMENTS` are left out)."""
    from packaging.requirements import Requirement  # pip's own dependency; on every node that has pip
    from packaging.utils import canonicalize_name

    carried = dict(_name_and_version(file) for file in files)
    unmet = []
    for file in files:
        for line in _requires_dist(file):
            requirement = Requirement(line)
            if requirement.marker is not None and not requirement.marker.evaluate({"extra": ""}):
                continue
            name = canonicalize_name(requirement.name)
            if name in UNUSED_REQUIREMENTS:
                continue
            version = carried.get(name) or _installed_version(requirement.name)
            if version is None or not requirement.specifier.contains(version, prereleases=True):
                have = "not installed" if version is None else f"{version} installed"
                unmet.append(f"{file.name} needs {requirement} ({have})")
    return unmet


def _requires_dist(wheel: Path) -> list[str]:
    with zipfile.ZipFile(wheel) as archive:
        metadata = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        text = archive.read(metadata).decode("utf-8")
    return [line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("Requires-Dist:")]


def _name_and_version(wheel: Path) -> tuple[str, str]:
    from packaging.utils import canonicalize_name, parse_wheel_filename

    name, version, _, _ = parse_wheel_filename(wheel.name)
    return canonicalize_name(name), str(version)


def _installed_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _find_wheel(wheel_dir: Path, wheel: Wheel) -> Path | None:
    """The wheel file of ``wheel`` in ``wheel_dir`` (any version: the node may take what the folder has)."""
    stem = wheel.name.replace("-", "_")
    found = sorted(wheel_dir.glob(f"{stem}-*.whl")) if wheel_dir.is_dir() else []
    return found[-1] if found else None


def download(dest: Path, wheels: tuple[Wheel, ...] = WHEELS) -> int:
    """Download ``wheels`` for CPython 3.12 on x86-64 Linux into ``dest``; returns their total bytes.

    Raises :class:`WheelError` when they exceed :data:`MAX_WHEEL_BYTES`.
    """
    dest.mkdir(parents=True, exist_ok=True)
    platforms = [arg for platform in PLATFORMS for arg in ("--platform", platform)]
    command = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:"]
    command += ["--python-version", PYTHON_VERSION, "--implementation", "cp", *platforms, "-d", str(dest)]
    subprocess.run([*command, *(f"{w.name}=={w.version}" for w in wheels)], check=True)
    files = [_find_wheel(dest, wheel) for wheel in wheels]
    total = sum(file.stat().st_size for file in files if file is not None)
    if total > MAX_WHEEL_BYTES:
        raise WheelError(
            f"the wheels in {dest} take {total / 2**20:.1f} MiB, over {MAX_WHEEL_BYTES / 2**20:.0f}"
        )
    return total


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(
        description="download the wheels an offline CUDA node needs for gpu-check"
    )
    parser.add_argument(
        "--dest", type=Path, default=DEFAULT_WHEEL_DIR, help="wheel folder (default: %(default)s)"
    )
    args = parser.parse_args(argv)
    total = download(args.dest)
    for wheel in WHEELS:
        print(f"{wheel.name}=={wheel.version}: {wheel.why}")
    print(f"{args.dest}: {total / 2**20:.1f} MiB (limit {MAX_WHEEL_BYTES / 2**20:.0f} MiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
