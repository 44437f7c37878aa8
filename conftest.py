"""Settings for every test and doctest in the repository."""

import torch

# The test models are tiny: intra-op threads only add wake-up latency, which on a loaded 2-core
# machine turned a 50 ms UNet call into seconds. One thread keeps the suite fast and steady.
torch.set_num_threads(1)


def pytest_sessionfinish(session, exitstatus) -> None:
    """Drop dynamo's compiled code while the interpreter is whole: once, after all 438 tests had
    passed, the suite's process crashed at exit (a segmentation fault, no traceback); dynamo's
    caches torn down during interpreter shutdown are a known source of such crashes."""
    torch._dynamo.reset()
