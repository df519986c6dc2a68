"""Inside `docker build` (app stage): check the installed project and stage its files for the runtime stage.

    /opt/venv/bin/python stage_project.py SRC_DIR STAGING_DIR

1. The embedded default model's weights must be in the installed package (package data).
2. ``pipeline run`` with no ``--config`` reads ``pipeline.config.DEFAULT_CONFIG``; in a non-editable
   install that path lies outside the package, so ``SRC_DIR/examples/default.yaml`` is put there
   (nothing happens once the package ships its default itself).
3. Every file of the ``edge-pipeline`` distribution (modules, byte code, package data, metadata,
   the ``pipeline`` console script) and that default config are copied to ``STAGING_DIR`` under
   their absolute paths, so the runtime stage adds them with one small ``COPY`` on top of the
   dependency layer, which then stays cached when only the source changes.
"""

from __future__ import annotations

import importlib.metadata as md
import shutil
import sys
from importlib import resources
from pathlib import Path


def main(src: Path, staging: Path) -> None:
    weights = resources.files("stages.load") / "weights" / "digits_resnet20_w32.pt"
    if not weights.is_file():
        sys.exit(f"error: the default model's weights are not in the installed package ({weights})")
    print(f"weights: {weights}")

    import pipeline.config as cfg

    files = [Path(str(f.locate())).resolve() for f in md.distribution("edge-pipeline").files or []]
    default = Path(cfg.DEFAULT_CONFIG)
    if not default.is_file():
        default.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src / "examples" / "default.yaml", default)
        print(f"default config: {default}")
    files.append(default.resolve())

    n = 0
    for f in files:
        if f.is_file():
            dst = staging / f.relative_to("/")
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(f, dst)
            n += 1
    print(f"staged {n} files of edge-pipeline under {staging}")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
