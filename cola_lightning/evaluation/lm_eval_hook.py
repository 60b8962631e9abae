"""Makes ``--model cola`` known to lm-evaluation-harness 0.4.13, which reads no entry points.

lm-eval fills its model registry when ``lm_eval.models`` is imported. `install` writes a ``.pth``
file into site-packages whose one line, run at interpreter start, adds an import hook (cheap: no
torch, no lm_eval import) that registers ``cola`` -> `cola_lightning.evaluation.harness:CoLALM` as
a lazy entry right after ``lm_eval.models`` loads. ``scripts/install.sh`` runs it:

    python -m cola_lightning.evaluation.lm_eval_hook
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import sys
import sysconfig
from pathlib import Path

MODEL_NAME = "cola"
TARGET = "cola_lightning.evaluation.harness:CoLALM"
WATCHED = "lm_eval.models"
PTH_FILE = "cola_lightning_lm_eval.pth"
# A .pth line runs only if it starts with "import"; an interpreter whose cola_lightning lacks this
# module (or has none) must start silently, hence the try.
PTH_LINE = (
    'import sys; exec("try:\\n from cola_lightning.evaluation.lm_eval_hook import activate\\n'
    'except ImportError:\\n pass\\nelse:\\n activate()")\n'
)


def register() -> None:
    """Adds the lazy ``cola`` entry to lm-eval's model registry (once)."""
    from lm_eval.api.registry import model_registry

    if MODEL_NAME not in model_registry:
        model_registry.register(MODEL_NAME, target=TARGET)


class _RegisterAfterImport(importlib.abc.MetaPathFinder):
    """Finds nothing itself; wraps the loader of `WATCHED` so that `register` runs after it."""

    def find_spec(self, name, path=None, target=None):
        if name != WATCHED:
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.loader is not None:
            execute = spec.loader.exec_module

            def exec_module(module):
                execute(module)
                register()

            spec.loader.exec_module = exec_module
        return spec


def activate() -> None:
    """Registers now if lm-eval's models are loaded, else right after they load."""
    if WATCHED in sys.modules:
        register()
    elif not any(isinstance(f, _RegisterAfterImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _RegisterAfterImport())


def install() -> Path:
    """Writes the ``.pth`` file into this interpreter's site-packages."""
    path = Path(sysconfig.get_paths()["purelib"]) / PTH_FILE
    path.write_text(PTH_LINE)
    return path


if __name__ == "__main__":
    print(f"installed {install()}")
