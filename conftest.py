"""Settings for every test and doctest in the repository."""

import pytest
import torch

# The test models are tiny: intra-op threads only add wake-up latency, which on a loaded 2-core
# machine turned a 50 ms UNet call into seconds. One thread keeps the suite fast and steady.
torch.set_num_threads(1)


def pytest_sessionfinish(session, exitstatus) -> None:
    """Drop dynamo's compiled code while the interpreter is whole: once, after all 438 tests had
    passed, the suite's process crashed at exit (a segmentation fault, no traceback); dynamo's
    caches torn down during interpreter shutdown are a known source of such crashes."""
    torch._dynamo.reset()


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--slow", action="store_true",
        help="also run the tests marked slow (compiled editors on the tiny diffusers models: about "
        "14 more minutes of one core's time)",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The default run skips the ``slow`` tests, so that it takes a few minutes; each is named in
    the report with the way to run it."""
    if config.getoption("--slow"):
        return
    skip = pytest.mark.skip(reason="slow: run with --slow (bash scripts/test.sh --slow)")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _hub_reachable(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests do not hang on this machine's network: steer's loaders take the Hub for reachable,
    as on a connected machine (the Hub library's own calls are replaced by the tests, or run with
    HF_HUB_OFFLINE), unless a test replaces ``backbones.auto.hub_unreachable`` itself."""
    import backbones.auto

    monkeypatch.setattr(backbones.auto, "hub_unreachable", lambda timeout=3.0: None)
