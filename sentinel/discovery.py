"""Which files ``sentinel lint`` reads: walking directories, excludes and ignore files.

Under a directory, ``*.py``, ``*.pyi`` and ``*.ipynb`` files are linted unless the configuration
excludes them or an ignore file does: ``.gitignore`` files (inside a git repository, each applying to
its own directory and below, a deeper one overriding a shallower one), ``.git/info/exclude``, and
``.ignore`` files (anywhere), read with the ``pathspec`` library (git's own matching rules).
Ignored directories are pruned, never walked. ``respect_gitignore=False`` turns all of that off.

A path named explicitly is always linted, even if excluded or ignored, unless ``force_exclude`` is
set (what pre-commit hooks need, as in ruff).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from pathlib import Path

import pathspec

from sentinel.config import Settings

SUFFIXES = (".py", ".pyi", ".ipynb")

__all__ = ["SUFFIXES", "IgnoreFiles", "discover"]


class IgnoreFiles:
    """The ignore rules in force while walking: one compiled spec per directory that has any."""

    def __init__(self) -> None:
        self._specs: dict[Path, pathspec.GitIgnoreSpec | None] = {}
        self._git_roots: dict[Path, Path | None] = {}

    def git_root(self, directory: Path) -> Path | None:
        if directory not in self._git_roots:
            found = None
            for d in (directory, *directory.parents):
                if (d / ".git").exists():
                    found = d
                    break
            self._git_roots[directory] = found
        return self._git_roots[directory]

    def _spec(self, directory: Path, git_root: Path | None) -> pathspec.GitIgnoreSpec | None:
        if directory in self._specs:
            return self._specs[directory]
        names = [".gitignore"] if git_root is not None else []
        names.append(".ignore")
        lines: list[str] = []
        if git_root is not None and directory == git_root:
            lines += _read_lines(directory / ".git" / "info" / "exclude")
        for name in names:
            lines += _read_lines(directory / name)
        spec = pathspec.GitIgnoreSpec.from_lines(lines) if lines else None
        self._specs[directory] = spec
        return spec

    def is_ignored(self, path: Path, is_dir: bool, stop: Path | None = None) -> bool:
        """True when the ignore files of ``path``'s ancestors ignore it (the deepest verdict wins).

        Ancestors are read up to the git repository's root, or outside a repository up to ``stop``
        (the directory being walked).
        """
        path = Path(os.path.abspath(path))
        git_root = self.git_root(path.parent)
        top = git_root if git_root is not None else Path(os.path.abspath(stop or path.parent))
        chain = [path.parent, *path.parent.parents]
        chain = chain[: chain.index(top) + 1] if top in chain else [path.parent]
        for directory in chain:  # deepest first: a nested file overrides its parents
            spec = self._spec(directory, git_root)
            if spec is None:
                continue
            rel = path.relative_to(directory).as_posix() + ("/" if is_dir else "")
            verdict = _verdict(spec, rel)
            if verdict is not None:
                return verdict
        return False


def _verdict(spec: pathspec.PathSpec, rel: str) -> bool | None:
    """Git's rule: the last pattern that matches decides (``!pattern`` re-includes); None: no match."""
    verdict = None
    for pattern in spec.patterns:
        if pattern.include is not None and pattern.match_file(rel) is not None:
            verdict = bool(pattern.include)
    return verdict


def _read_lines(path: Path) -> list[str]:
    try:
        return path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return []


def discover(
    paths: Iterable[Path],
    settings: Settings,
    *,
    force_exclude: bool = False,
    respect_gitignore: bool = True,
) -> Iterator[tuple[Path, str | None]]:
    """Yield ``(file, error)`` for the files under ``paths``, pruning excluded and ignored directories."""
    ignores = IgnoreFiles() if respect_gitignore else None
    for root in paths:
        if not root.exists() and not root.is_symlink():
            yield root, f"{root}: no such file or directory"
            continue
        if force_exclude and (
            settings.is_excluded(root) or (ignores is not None and ignores.is_ignored(root, root.is_dir()))
        ):
            continue
        if not root.is_dir():
            yield root, None
            continue
        for dirpath, dirnames, filenames in os.walk(root):
            here = Path(dirpath)
            kept = []
            for d in sorted(dirnames):
                sub = here / d
                if settings.is_excluded(sub, below=root):
                    continue
                if ignores is not None and ignores.is_ignored(sub, True, root):
                    continue
                kept.append(d)
            dirnames[:] = kept
            for name in sorted(filenames):
                if not name.endswith(SUFFIXES):
                    continue
                file = here / name
                if settings.is_excluded(file, below=root):
                    continue
                if ignores is not None and ignores.is_ignored(file, False, root):
                    continue
                yield file, None
