"""Configuration: finding it, reading it, selection and exclusion.

The configuration is the closest ``sentinel.toml`` (keys at its top level) or ``pyproject.toml`` with
a ``[tool.sentinel]`` table, walking up from the linted path; in one directory ``sentinel.toml`` wins,
as ``ruff.toml`` does for ruff. Paths in it are relative to that file's directory. Keys: ``select``,
``ignore``, ``extend-select``, ``exclude``, ``extend-exclude``, ``per-file-ignores`` (glob -> codes;
a leading ``!`` negates the glob) and ``respect-gitignore``. A file that is not valid TOML, an unknown
key or a value of the wrong type is a :class:`ConfigError` naming the file (exit status 2).
"""

from __future__ import annotations

import fnmatch
import os
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

DEFAULT_EXCLUDE: tuple[str, ...] = (
    ".bzr",
    ".direnv",
    ".eggs",
    ".git",
    ".git-rewrite",
    ".hg",
    ".ipynb_checkpoints",
    ".mypy_cache",
    ".nox",
    ".pants.d",
    ".pyenv",
    ".pytest_cache",
    ".pytype",
    ".ruff_cache",
    ".svn",
    ".tox",
    ".venv",
    ".vscode",
    "__pypackages__",
    "__pycache__",
    "_build",
    "buck-out",
    "build",
    "dist",
    "node_modules",
    "site-packages",
    "venv",
    ".sentinel_cache",
)

KNOWN_KEYS = {
    "select",
    "ignore",
    "extend-select",
    "exclude",
    "extend-exclude",
    "per-file-ignores",
    "respect-gitignore",
}
CONFIG_NAMES = ("sentinel.toml", "pyproject.toml")


class ConfigError(Exception):
    """A broken ``[tool.sentinel]`` table: reported with the file and exits 2."""


@dataclass
class Settings:
    root: Path = field(default_factory=Path.cwd)
    config_path: Path | None = None
    select: list[str] | None = None
    ignore: list[str] = field(default_factory=list)
    extend_select: list[str] = field(default_factory=list)
    exclude: list[str] = field(default_factory=lambda: list(DEFAULT_EXCLUDE))
    per_file_ignores: dict[str, list[str]] = field(default_factory=dict)
    respect_gitignore: bool = True

    # -- exclusion ---------------------------------------------------------------------------------
    def _relative(self, path: Path) -> str:
        try:
            return Path(os.path.abspath(path)).relative_to(Path(os.path.abspath(self.root))).as_posix()
        except ValueError:
            return Path(os.path.abspath(path)).as_posix()

    def is_excluded(self, path: Path, below: Path | None = None) -> bool:
        """True when ``path`` (file or directory) or one of its parents matches an exclude pattern.

        Patterns without ``/`` match any single path component (``build``, ``*.pyi``); patterns with
        ``/`` match the path relative to the config's directory, or one of its parents
        (``legacy/*.py``, ``src/generated``). With ``below`` (a directory named explicitly), only what
        lies under it can be excluded: ``sentinel lint fixtures/`` lints fixtures even if the
        config excludes ``fixtures``.
        """
        parts = self._relative(path).split("/")
        start = 0
        if below is not None:
            base = self._relative(below).split("/")
            if base != ["."] and parts[: len(base)] == base and len(parts) > len(base):
                start = len(base)
        for pattern in self.exclude:
            pat = pattern.rstrip("/")
            if "/" in pat:
                if any(fnmatch.fnmatch("/".join(parts[:i]), pat) for i in range(start + 1, len(parts) + 1)):
                    return True
            elif any(fnmatch.fnmatch(part, pat) for part in parts[start:]):
                return True
        return False

    def ignored_for(self, path: Path) -> list[str]:
        rel = self._relative(path)
        name = Path(rel).name
        out: list[str] = []
        for pattern, codes in self.per_file_ignores.items():
            negate = pattern.startswith("!")
            pat = pattern[1:] if negate else pattern
            hit = fnmatch.fnmatch(rel, pat) or fnmatch.fnmatch(name, pat)
            if hit != negate:
                out.extend(codes)
        return out


def _read_toml(path: Path) -> dict:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from None


def find_config(start: Path) -> tuple[Path, dict] | None:
    """The closest configuration at or above ``start`` and its sentinel table.

    ``sentinel.toml`` (top-level keys) beats ``pyproject.toml`` (``[tool.sentinel]``) in the same
    directory; a ``pyproject.toml`` without a ``[tool.sentinel]`` table is passed over.
    """
    here = Path(os.path.abspath(start))
    if here.is_file() or not here.exists():
        here = here.parent
    for directory in (here, *here.parents):
        own = directory / "sentinel.toml"
        if own.is_file():
            return own, _read_toml(own)
        candidate = directory / "pyproject.toml"
        if candidate.is_file():
            data = _read_toml(candidate)
            tool = data.get("tool")
            if isinstance(tool, dict) and "sentinel" in tool:
                if not isinstance(tool["sentinel"], dict):
                    raise ConfigError(f"{candidate}: [tool.sentinel] must be a table")
                return candidate, tool["sentinel"]
    return None


def _str_list(value: object, key: str, path: Path) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return list(value)
    raise ConfigError(f"{path}: {_where(path)}{key} must be a list of strings")


def _where(path: Path) -> str:
    return "" if path.name == "sentinel.toml" else "[tool.sentinel] "


def load_settings(start: Path | None = None, *, use_config: bool = True) -> Settings:
    """Settings for files under ``start``: defaults overlaid with the nearest configuration."""
    start = Path.cwd() if start is None else start
    found = find_config(start) if use_config else None
    if found is None:
        root = Path(os.path.abspath(start))
        return Settings(root=root if root.is_dir() else root.parent)
    config, table = found
    where = _where(config)
    unknown = set(table) - KNOWN_KEYS
    if unknown:
        raise ConfigError(f"{config}: unknown {where}key(s): {', '.join(sorted(unknown))}")
    settings = Settings(root=config.parent, config_path=config)
    if "select" in table:
        settings.select = _str_list(table["select"], "select", config)
    settings.ignore = _str_list(table.get("ignore", []), "ignore", config)
    settings.extend_select = _str_list(table.get("extend-select", []), "extend-select", config)
    if "exclude" in table:
        settings.exclude = list(DEFAULT_EXCLUDE) + _str_list(table["exclude"], "exclude", config)
    settings.exclude += _str_list(table.get("extend-exclude", []), "extend-exclude", config)
    pfi = table.get("per-file-ignores", {})
    if not isinstance(pfi, dict):
        raise ConfigError(f"{config}: {where}per-file-ignores must be a table of glob = [codes]")
    settings.per_file_ignores = {k: _str_list(v, f"per-file-ignores.{k}", config) for k, v in pfi.items()}
    gitignore = table.get("respect-gitignore", True)
    if not isinstance(gitignore, bool):
        raise ConfigError(f"{config}: {where}respect-gitignore must be true or false")
    settings.respect_gitignore = gitignore
    return settings


def resolve_selection(
    all_rules: Sequence[tuple[str, str]],
    select: Iterable[str] | None,
    ignore: Iterable[str],
    extend_select: Iterable[str] = (),
) -> set[str]:
    """Codes enabled by select/ignore selectors (codes, code prefixes, names, or ``ALL``)."""

    def matching(selector: str) -> set[str]:
        sel = selector.strip()
        if not sel:
            return set()
        if sel.upper() == "ALL":
            return {code for code, _ in all_rules}
        hits = {code for code, name in all_rules if code.startswith(sel.upper()) or name == sel.lower()}
        if not hits:
            raise ConfigError(f"unknown rule selector: {selector!r}")
        return hits

    enabled: set[str] = set()
    if select is None:
        enabled = {code for code, _ in all_rules}
    else:
        for sel in select:
            enabled |= matching(sel)
    for sel in extend_select:
        enabled |= matching(sel)
    for sel in ignore:
        enabled -= matching(sel)
    return enabled
