"""Settings for every test and doctest in the repository."""

import torch

# The test models are tiny: intra-op threads only add wake-up latency, which on a loaded 2-core
# machine turned a 50 ms UNet call into seconds. One thread keeps the suite fast and steady.
torch.set_num_threads(1)
