"""pycocoevalcap's own SPICE (`Spice().compute_score`, its Python and its jar) run directly, as the reference.

Unchanged code, in a private copy of its `spice` folder (links to the installed files) so that the CoreNLP jars
it expects in `spice/lib` and the `tmp`/`cache` folders it writes next to itself never touch the installed package.
On Java 15+ the jar needs two things the JDK no longer has, given to the `java` it starts through
$JDK_JAVA_OPTIONS: the module openings its parse cache needs, and a JavaScript engine (Rhino, on the module path)
for the pretty-printing of its output.

    with reference_spice(jar_dir, folder) as spice:
        corpus, per_sample = spice.compute_score(gts, res)
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType

from scoring.java import pycocoevalcap_dir
from scoring.spice import ADD_OPENS, CORENLP_JARS, SPICE_JARS

JS_ENGINE_MODULES = ("org.mozilla.rhino", "org.mozilla.rhino.engine")


def _package_copy(jar_dir: Path, folder: Path) -> Path:
    installed = pycocoevalcap_dir() / "spice"
    package = folder / "reference_spice"
    (package / "lib").mkdir(parents=True)
    for name in ("__init__.py", "spice.py", "get_stanford_models.py"):
        (package / name).symlink_to(installed / name)
    # A real copy: Java resolves the jar's manifest Class-Path (lib/...) from where a symlink points.
    shutil.copyfile(installed / "spice-1.0.jar", package / "spice-1.0.jar")
    for jar in (installed / "lib").glob("*.jar"):
        (package / "lib" / jar.name).symlink_to(jar)
    for name in CORENLP_JARS:  # where its get_stanford_models() would have put them: it then downloads nothing
        (package / "lib" / name).symlink_to(jar_dir / name)
    return package


def _load(package: Path) -> ModuleType:
    name = f"reference_spice_{abs(hash(package))}"
    locations = [str(package)]
    spec = importlib.util.spec_from_file_location(name, package / "__init__.py", submodule_search_locations=locations)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return importlib.import_module(f"{name}.spice")


@contextmanager
def reference_spice(jar_dir: Path, folder: Path) -> Iterator[object]:
    """A `Spice()` of pycocoevalcap's, ready on this Java; the environment is restored afterwards."""
    package = _package_copy(jar_dir, folder)
    modules = folder / "js-engine"
    modules.mkdir()
    for pin in SPICE_JARS:
        if pin.name not in CORENLP_JARS:
            (modules / pin.name).symlink_to(jar_dir / pin.name)
    options = [*ADD_OPENS, "--module-path", str(modules), "--add-modules", ",".join(JS_ENGINE_MODULES)]
    previous = os.environ.get("JDK_JAVA_OPTIONS")
    os.environ["JDK_JAVA_OPTIONS"] = " ".join(options)
    try:
        yield _load(package).Spice()
    finally:
        if previous is None:
            os.environ.pop("JDK_JAVA_OPTIONS", None)
        else:
            os.environ["JDK_JAVA_OPTIONS"] = previous
