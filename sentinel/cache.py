"""The lint cache: ``.sentinel_cache/`` at the project root.

Two kinds of entries, both keyed by content (never by modification time):

- **results**: the findings of one linted file, valid while the file's text, the text of every
  project file its analysis could read (its import closure), the settings that shape findings
  (enabled rules) and sentinel's version are all unchanged. A warm re-run re-reads and hashes files
  but parses nothing.
- **module indexes** (:class:`~sentinel.analysis.project.ModuleIndex`): what a module binds at top level,
  by content digest, so a changed file's imports are resolved without re-reading their syntax.

The directory holds ``CACHEDIR.TAG`` and a ``.gitignore`` (``*``) so that backup tools and git skip
it. Writes are atomic (a temporary file renamed into place), so concurrent ``sentinel`` processes
(parallel jobs, a pre-commit run beside an editor) never read half an entry. A cache that cannot be
written (read-only checkout) is silently not used; a corrupt entry is a miss.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from sentinel import __version__
from sentinel.analysis.project import ModuleIndex, digest
from sentinel.diagnostics import Diagnostic

CACHE_DIR = ".sentinel_cache"
_TAG = "Signature: 8a477f597d28d172789f06886806bc55\n# This file is a cache directory tag created by sentinel.\n"


def settings_key(codes: list[str] | tuple[str, ...], extra: str = "") -> str:
    """What, besides file contents, decides a file's findings: the enabled rules, the version and
    sentinel's own code (an edited or reinstalled sentinel never serves results of the old one)."""
    text = json.dumps([__version__, _code_fingerprint(), sorted(codes), extra])
    return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()


@functools.lru_cache(maxsize=1)
def _code_fingerprint() -> str:
    package = Path(__file__).resolve().parent
    stamp = []
    for f in sorted(package.rglob("*.py")):
        try:
            st = f.stat()
        except OSError:
            continue
        stamp.append(f"{f.relative_to(package)}:{st.st_size}:{st.st_mtime_ns}")
    return hashlib.blake2b("\n".join(stamp).encode(), digest_size=8).hexdigest()


class Cache:
    """The cache of one project root (see the module docstring)."""

    def __init__(self, root: Path, directory: Path | None = None) -> None:
        self.root = root
        self.dir = (directory or root / CACHE_DIR) / __version__
        self._ready: bool | None = None

    # -- set-up ------------------------------------------------------------------------------------
    def _ensure(self) -> bool:
        if self._ready is None:
            try:
                top = self.dir.parent
                top.mkdir(parents=True, exist_ok=True)
                if not (top / "CACHEDIR.TAG").exists():
                    _atomic_write(top / "CACHEDIR.TAG", _TAG)
                if not (top / ".gitignore").exists():
                    _atomic_write(top / ".gitignore", "# Automatically created by sentinel.\n*\n")
                (self.dir / "results").mkdir(parents=True, exist_ok=True)
                (self.dir / "index").mkdir(parents=True, exist_ok=True)
                self._ready = True
            except OSError:
                self._ready = False
        return self._ready

    # -- results -----------------------------------------------------------------------------------
    def _result_file(self, path: Path, key: str) -> Path:
        name = hashlib.blake2b(f"{path.resolve()}\0{key}".encode(), digest_size=12).hexdigest()
        return self.dir / "results" / f"{name}.json"

    def get(self, path: Path, text: str, key: str, read: Any) -> list[Diagnostic] | None:
        """The cached findings of ``path`` (whose current text is ``text``), or None on a miss.

        ``read(dep_path) -> str | None`` gives a dependency's current text."""
        f = self._result_file(path, key)
        try:
            entry = json.loads(f.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        if entry.get("digest") != digest(text):
            return None
        for dep, dep_digest in entry.get("deps", {}).items():
            dep_text = read(Path(dep))
            if dep_text is None or digest(dep_text) != dep_digest:
                return None
        try:
            return [Diagnostic(**d) for d in entry["diagnostics"]]
        except (KeyError, TypeError):
            return None

    def put(self, path: Path, text: str, key: str, deps: dict[Path, str], diagnostics: list[Diagnostic]) -> None:
        """Store ``path``'s findings; ``deps`` maps every project file its analysis could read to its text."""
        if not self._ensure():
            return
        entry = {
            "path": str(path.resolve()),
            "digest": digest(text),
            "deps": {str(p.resolve()): digest(t) for p, t in deps.items()},
            "diagnostics": [_diag_dict(d) for d in diagnostics],
        }
        try:
            _atomic_write(self._result_file(path, key), json.dumps(entry))
        except OSError:
            pass

    # -- module indexes ----------------------------------------------------------------------------
    def get_index(self, key: str) -> ModuleIndex | None:
        try:
            return ModuleIndex.from_json(json.loads((self.dir / "index" / f"{key}.json").read_text(encoding="utf-8")))
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def put_index(self, key: str, index: ModuleIndex) -> None:
        if not self._ensure():
            return
        try:
            _atomic_write(self.dir / "index" / f"{key}.json", json.dumps(index.to_json()))
        except OSError:
            pass


def _diag_dict(d: Diagnostic) -> dict:
    return {
        "path": d.path,
        "line": d.line,
        "column": d.column,
        "end_line": d.end_line,
        "end_column": d.end_column,
        "code": d.code,
        "name": d.name,
        "message": d.message,
        "cell": d.cell,
    }


def _atomic_write(target: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".tmp-", suffix=".json")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
