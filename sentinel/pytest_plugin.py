"""pytest plugin for torch-sentinel (registered through the ``pytest11`` entry point).

Every pytest run in an environment where torch-sentinel is installed imports this module, so it is
kept free of heavy imports: loading it touches only pytest and the standard library (``sentinel``'s
package ``__init__`` is import-light too). torch, LibCST, :mod:`sentinel.lint` and
:mod:`sentinel.probes` are imported only when a test uses the ``sentinel`` fixture or the run is
started with ``--sentinel-lint``.

What it adds:

* the ``sentinel`` fixture, whose ``assert_overfits`` / ``assert_updates`` / ``assert_devices`` /
  ``assert_finite`` / ``assert_initial_loss`` / ``assert_batch_independent`` / ``assert_trains``
  helpers run the runtime probes on a model and fail the test with a readable report of the
  findings (without torch installed, the test fails with how to install it);
* ``--sentinel-lint``: every Python file under the test paths becomes a test item that runs
  ``sentinel lint`` on it (marker ``sentinel_lint``);
* options ``--sentinel-steps`` / ``--sentinel-device`` and ini keys ``sentinel_steps`` /
  ``sentinel_device`` for the probes' defaults (the command line beats the ini file, an argument
  given to a helper beats both).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from sentinel._pytest_probes import SentinelFixture

LINT_MARKER = "sentinel_lint"
LINT_PLUGIN_NAME = "sentinel-lint"
DEVICE_CHOICES_HELP = "auto, cpu, cuda or cuda:N"


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("sentinel", "torch-sentinel: training probes and lint")
    group.addoption(
        "--sentinel-lint",
        action="store_true",
        default=False,
        dest="sentinel_lint",
        help="Run `sentinel lint` on every Python file under the test paths, one test item per file "
        "(marker: sentinel_lint). Honours [tool.sentinel] in pyproject.toml and noqa comments.",
    )
    group.addoption(
        "--sentinel-steps",
        action="store",
        default=None,
        dest="sentinel_steps",
        metavar="N",
        help="Default number of optimizer steps for the sentinel fixture's probes "
        "(overrides the sentinel_steps ini key).",
    )
    group.addoption(
        "--sentinel-device",
        action="store",
        default=None,
        dest="sentinel_device",
        metavar="DEVICE",
        help=f"Default device for the sentinel fixture's probes: {DEVICE_CHOICES_HELP} "
        "(overrides the sentinel_device ini key).",
    )
    parser.addini(
        "sentinel_steps",
        "Default number of optimizer steps for the sentinel fixture's probes.",
        default="",
    )
    parser.addini(
        "sentinel_device",
        f"Default device for the sentinel fixture's probes ({DEVICE_CHOICES_HELP}).",
        default="",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", f"{LINT_MARKER}: a torch-sentinel lint check of one file (added by --sentinel-lint)."
    )
    # Validate the probe defaults up front so a typo is a usage error, not N failing tests.
    probe_defaults(config)
    if config.getoption("sentinel_lint", default=False):
        # Imported only when asked for: the lint engine pulls in LibCST.
        from sentinel._pytest_lint import LintCollector

        config.pluginmanager.register(LintCollector(config), LINT_PLUGIN_NAME)


def probe_defaults(config: pytest.Config) -> dict[str, object]:
    """The probe options configured for this run: ``{"steps": int, "device": str}``, set keys only.

    The command line beats the ini file. Raises :class:`pytest.UsageError` on a malformed value.
    """
    out: dict[str, object] = {}
    steps_raw, source = _pick(config, "sentinel_steps", "--sentinel-steps")
    if steps_raw:
        try:
            steps = int(steps_raw)
        except ValueError:
            steps = 0
        if steps < 1:
            raise pytest.UsageError(f"{source}: expected a positive integer, got {steps_raw!r}")
        out["steps"] = steps
    device, source = _pick(config, "sentinel_device", "--sentinel-device")
    if device:
        out["device"] = device
    elif source.startswith("--"):
        raise pytest.UsageError(f"{source}: expected {DEVICE_CHOICES_HELP}, got an empty value")
    return out


def _pick(config: pytest.Config, name: str, flag: str) -> tuple[str, str]:
    """(value, where it came from) for an option that exists both as ``flag`` and as ini key ``name``."""
    cli = config.getoption(name, default=None)
    if cli is not None:
        return str(cli).strip(), flag
    return str(config.getini(name) or "").strip(), f"{name} (ini)"


@pytest.fixture
def sentinel(request: pytest.FixtureRequest) -> SentinelFixture:
    """torch-sentinel's training probes as assertions.

    ``sentinel.assert_overfits(model=..., loss_fn=..., batch=(x, y), optimizer=...)`` and its siblings
    ``assert_updates``, ``assert_devices``, ``assert_finite``, ``assert_initial_loss`` (SEN110),
    ``assert_batch_independent`` (SEN111) and ``assert_trains`` (all of them) run
    the matching probe, fail the test with the findings (codes, names, parameters, numbers) if there
    are any, and return the ProbeResult otherwise. Defaults for ``steps`` and ``device`` come from
    ``--sentinel-steps`` / ``--sentinel-device`` or the ``sentinel_steps`` / ``sentinel_device`` ini keys.
    """
    from sentinel._pytest_probes import SentinelFixture

    return SentinelFixture(defaults=probe_defaults(request.config))
