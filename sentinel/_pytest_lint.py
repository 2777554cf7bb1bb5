"""``pytest --sentinel-lint``: every Python file and Jupyter notebook under the test paths becomes one
lint test item.

Registered by :mod:`sentinel.pytest_plugin` only when ``--sentinel-lint`` is given, so without the
option neither this module nor the lint engine (and LibCST) is imported. ``[tool.sentinel]``
(``exclude``, ``select``, ``per-file-ignores``, ...) and ``# noqa`` / ``# sentinel: ignore[...]``
comments apply as they do for ``sentinel lint``, because the items call the same engine.

Files that passed and have not changed since (same size and modification time, same configuration,
same engine) are not linted again: the outcome is remembered in pytest's cache (``--cache-clear``
forgets it), as pytest-ruff and pytest-flake8 do.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from _pytest._code.code import TerminalRepr

    from sentinel.lint import Settings

ITEM_NAME = "sentinel-lint"
MARKER = "sentinel_lint"
CACHE_KEY = "sentinel/lint-passed"


class LintError(Exception):
    """A file has findings or cannot be linted; ``str()`` is the report to print."""


class LintCollector:
    """The collection hooks, active only under ``--sentinel-lint``."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self._settings: dict[Path, Settings | _BrokenSettings] = {}
        self._fingerprints: dict[int, str] = {}
        cache = getattr(config, "cache", None)
        self._passed: dict[str, list[Any]] = dict(cache.get(CACHE_KEY, {})) if cache is not None else {}
        self._changed: dict[str, list[Any] | None] = {}  # path -> new stamp, or None: forget it

    def settings_for(self, path: Path) -> Settings:
        """The settings for files in ``path``'s directory; raises :class:`LintError` on a broken
        ``[tool.sentinel]`` table (every file under it then fails with that one-line reason)."""
        from sentinel.lint import load_settings

        directory = path.parent
        if directory not in self._settings:
            try:
                self._settings[directory] = load_settings(directory)
            except Exception as exc:  # ConfigError and friends: the message names the file and key
                self._settings[directory] = _BrokenSettings(f"{type(exc).__name__}: {exc}")
        settings = self._settings[directory]
        if isinstance(settings, _BrokenSettings):
            raise LintError(f"cannot lint {path.name}: {settings.reason}")
        return settings

    def pytest_collect_file(self, file_path: Path, parent: pytest.Collector) -> LintFile | None:
        if file_path.suffix not in (".py", ".ipynb"):
            return None
        try:
            if self.settings_for(file_path).is_excluded(file_path):
                return None
        except LintError:
            pass  # collected anyway: its item fails with the configuration error
        return LintFile.from_parent(parent, path=file_path, collector=self)

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        cache = getattr(self.config, "cache", None)
        if cache is None or not self._changed:
            return
        # Merge into what is stored now: under pytest-xdist every worker writes its own share.
        stored = dict(cache.get(CACHE_KEY, {}))
        for path, stamp in self._changed.items():
            if stamp is None:
                stored.pop(path, None)
            else:
                stored[path] = stamp
        cache.set(CACHE_KEY, stored)

    # -- the "previously passed" memory ---------------------------------------------------------

    def _stamp(self, path: Path, settings: Settings) -> list[Any] | None:
        try:
            st = path.stat()
        except OSError:
            return None
        fingerprint = self._fingerprint(settings)
        if fingerprint is None:
            return None
        return [st.st_mtime_ns, st.st_size, fingerprint]

    def _fingerprint(self, settings: Settings) -> str | None:
        """A digest of the configuration and the engine version, or None when it can't be trusted."""
        key = id(settings)
        if key not in self._fingerprints:
            text = repr(settings)
            if " at 0x" in text:  # no meaningful repr: don't cache results under it
                self._fingerprints[key] = ""
            else:
                self._fingerprints[key] = hashlib.sha1(
                    f"{text}\0{_engine_version()}".encode(), usedforsecurity=False
                ).hexdigest()
        return self._fingerprints[key] or None

    def previously_passed(self, path: Path, settings: Settings) -> bool:
        stamp = self._stamp(path, settings)
        return stamp is not None and self._passed.get(str(path)) == stamp

    def remember(self, path: Path, settings: Settings, passed: bool) -> None:
        key = str(path)
        stamp = self._stamp(path, settings) if passed else None
        if stamp is None:
            if self._passed.pop(key, None) is not None:
                self._changed[key] = None
        elif self._passed.get(key) != stamp:
            self._passed[key] = stamp
            self._changed[key] = stamp


class _BrokenSettings:
    """Stands in for the settings of a directory whose configuration could not be loaded."""

    def __init__(self, reason: str) -> None:
        self.reason = reason


def _engine_version() -> str:
    """The sentinel version plus the newest modification time of sentinel's own sources (the
    runtime half aside), so a developer editing a rule does not get stale "passed" results."""
    import sentinel

    root = Path(sentinel.__file__).parent
    newest = 0
    for source in root.rglob("*.py"):
        if "probes" in source.relative_to(root).parts:
            continue
        try:
            newest = max(newest, source.stat().st_mtime_ns)
        except OSError:
            pass
    return f"{sentinel.__version__}:{newest}"


def _shown_path(path: Path) -> Path:
    try:
        return path.relative_to(Path.cwd())
    except ValueError:
        return path


class LintFile(pytest.File):
    """One Python file or notebook; collects a single :class:`LintItem`."""

    def __init__(self, *, collector: LintCollector, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.lint_collector = collector

    def collect(self) -> Iterator[LintItem]:
        yield LintItem.from_parent(self, name=ITEM_NAME)


class LintItem(pytest.Item):
    """``sentinel lint`` on one file: fails listing the findings, or the reason it can't be parsed."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.add_marker(MARKER)

    @property
    def lint_collector(self) -> LintCollector:
        assert isinstance(self.parent, LintFile)
        return self.parent.lint_collector

    def runtest(self) -> None:
        from sentinel.lint import lint_file, render_results

        collector = self.lint_collector
        settings = collector.settings_for(self.path)
        if collector.previously_passed(self.path, settings):
            self.user_properties.append(("sentinel_lint", "cached"))
            return
        # Lint it under the path `sentinel lint` would show when run from here: relative to the
        # working directory when the file is below it.
        result = lint_file(_shown_path(self.path), settings)
        if result.error:
            collector.remember(self.path, settings, passed=False)
            raise LintError(f"cannot lint {result.error}")
        if result.diagnostics:
            collector.remember(self.path, settings, passed=False)
            raise LintError(render_results([result], fmt="text", color="never").rstrip("\n"))
        collector.remember(self.path, settings, passed=True)
        self.user_properties.append(("sentinel_lint", "clean"))

    def repr_failure(
        self,
        excinfo: pytest.ExceptionInfo[BaseException],
        style: Any = None,
    ) -> str | TerminalRepr:
        if isinstance(excinfo.value, LintError):
            return str(excinfo.value)
        return super().repr_failure(excinfo, style=style)

    def reportinfo(self) -> tuple[Path, int | None, str]:
        return self.path, None, f"{ITEM_NAME} {self._display_path()}"

    def _display_path(self) -> str:
        try:
            return self.path.relative_to(self.config.rootpath).as_posix()
        except ValueError:
            return str(self.path)
