"""What each install of tierlm pulls: packages and megabytes per extra, in fresh virtual environments.

    python bench/install.py                      # sdk, router, edge, cloud -> bench/results/install.json
    python bench/install.py --extras sdk router

The wheel is built from this checkout (`pip wheel --no-deps .`); each extra is installed into an
empty venv made here (`python -m venv`), as `pip install 'tierlm[extra]'` would, so the numbers are
what a user of that role downloads and unpacks. Extras that need torch are measured twice: as pip
resolves them from the index (torch's CUDA build, with its nvidia-* packages) and with the CPU
build the README's install section describes (here: requirements/constraints.txt, whose torch pin
this machine's wheel folder serves as +cpu). The size is the venv's site-packages on disk less
that of the empty venv (pip itself). pip's cache (and this machine's wheel folders) make a rerun
offline-capable. `gpu` (vLLM's CUDA build) is left out by default: it is built for a GPU machine.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tierlm.results import write_results  # noqa: E402

# Packages an empty venv already has; not counted as pulled in.
BASELINE = {"pip", "setuptools"}


def build_wheel(out: Path) -> Path:
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", str(ROOT), "-w", str(out)],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    (wheel,) = out.glob("tierlm-*.whl")
    return wheel


def site_packages(venv: Path) -> Path:
    (folder,) = (venv / "lib").glob("python3*/site-packages")
    return folder


def disk_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file() and not f.is_symlink())


def fresh_venv(path: Path) -> Path:
    subprocess.run([sys.executable, "-m", "venv", str(path)], check=True)
    return path / "bin" / "python"


def installed(python: Path) -> dict[str, str]:
    listing = subprocess.run([str(python), "-m", "pip", "list", "--format", "json"], check=True, capture_output=True, text=True)
    return {p["name"].lower(): p["version"] for p in json.loads(listing.stdout)}


CONSTRAINTS = ROOT / "requirements" / "constraints.txt"


def install(wheel: Path, extra: str, work: Path, cpu_torch: bool) -> dict:
    venv = work / f"venv-{extra}"
    python = fresh_venv(venv)
    empty = disk_bytes(site_packages(venv))
    target = str(wheel) if extra == "sdk" else f"tierlm[{extra}] @ {wheel.as_uri()}"
    command = [str(python), "-m", "pip", "install", "-q", target]
    if cpu_torch:
        command += ["-c", str(CONSTRAINTS)]
    started = time.perf_counter()
    subprocess.run(command, check=True)
    seconds = time.perf_counter() - started
    packages = {n: v for n, v in installed(python).items() if n not in BASELINE}
    size = disk_bytes(site_packages(venv)) - empty
    shutil.rmtree(venv)
    install_line = "pip install tierlm" if extra == "sdk" else f"pip install 'tierlm[{extra}]'"
    return {
        "name": extra if not cpu_torch else f"{extra} (CPU torch)",
        "install": install_line + (" -c requirements/constraints.txt" if cpu_torch else ""),
        "packages": len(packages),
        "mb": round(size / 2**20, 1),
        "torch": packages.get("torch"),
        "install_s": round(seconds, 1),
        "package_versions": dict(sorted(packages.items())),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--extras", nargs="+", default=["sdk", "router", "edge", "cloud"])
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="tierlm-install-") as tmp:
        work = Path(tmp)
        wheel = build_wheel(work / "dist")
        for extra in args.extras:
            for cpu_torch in (False, True) if extra != "sdk" else (False,):
                row = install(wheel, extra, work, cpu_torch)
                print(f"{row['name']:<20} {row['packages']:>4} packages {row['mb']:>8.1f} MB  torch={row['torch']}  "
                      f"{row['install_s']:.0f} s", flush=True)
                rows.append(row)
    path = write_results("install", rows, pip_config=os.environ.get("PIP_CONFIG_FILE", "default"))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
