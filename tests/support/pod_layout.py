"""A folder standing in for a tierlm container's filesystem, laid out the way the Dockerfile lays
out the image, with the absolute paths the Helm chart uses mapped under it.

No container engine runs here, so a test builds the image's /models from the Dockerfile's own
instructions (the edge artifact at the `--out` of its compress step, every COPY into /models),
writes the files Kubernetes would mount (policy, tenants, TLS), and runs the container's exact
arguments with each chart path (/etc/tierlm, /models, /var/lib/tierlm, /tmp) moved under the root.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "Dockerfile"
MOUNT_POINTS = ("/etc/tierlm", "/models", "/var/lib/tierlm", "/tmp")
_CHART_PATH = re.compile(r"(?<![\w./-])(" + "|".join(re.escape(m) for m in MOUNT_POINTS) + r")(?=/|\b|$)")


def dockerfile_stage(name: str) -> list[str]:
    """The instructions of one build stage, continuation lines joined."""
    text = re.sub(r"\\\n\s*", " ", DOCKERFILE.read_text())
    stage, lines = None, []
    for line in text.splitlines():
        match = re.match(r"FROM \S+ AS (\S+)", line)
        if match:
            stage = match.group(1)
        elif stage == name and line.strip() and not line.lstrip().startswith("#"):
            lines.append(line.strip())
    return lines


def dockerignore_excludes(path: str) -> bool:
    """Whether .dockerignore keeps `path` (relative to the repository) out of the build context:
    the last pattern matching it or one of its parents decides, `!` re-includes."""
    from fnmatch import fnmatch

    excluded = False
    parts = Path(path).parts
    for raw in (REPO / ".dockerignore").read_text().splitlines():
        pattern = raw.strip()
        if not pattern or pattern.startswith("#"):
            continue
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").rstrip("/")
        for depth in range(1, len(parts) + 1):
            candidate = "/".join(parts[:depth])
            if fnmatch(candidate, pattern):  # a matching folder takes its contents with it
                excluded = not negate
                break
    return excluded


class PodRoot:
    def __init__(self, root: Path):
        self.root = root
        for mount in MOUNT_POINTS:
            self.path(mount).mkdir(parents=True, exist_ok=True)

    def path(self, absolute: str) -> Path:
        return self.root / absolute.lstrip("/")

    def map(self, text: str) -> str:
        """`text` with every chart path moved under the root."""
        return _CHART_PATH.sub(lambda m: str(self.path(m.group(1))), text)

    def lay_out_models(self, edge_artifact: Path) -> list[str]:
        """/models as the Dockerfile's `models` stage leaves it: `edge_artifact` where its compress
        step writes (a stand-in for the compressed model) and every COPY into /models. Returns the
        folders made."""
        made = []
        for line in dockerfile_stage("models"):
            out = re.search(r"tierlm compress .*--out (\S+)", line)
            if out:
                shutil.copytree(edge_artifact, self.path(out.group(1)))
                made.append(out.group(1))
            copy = re.match(r"COPY (?!--)(\S+) (/models\S*)$", line)
            if copy:
                shutil.copytree(REPO / copy.group(1), self.path(copy.group(2)))
                made.append(copy.group(2))
        return made
