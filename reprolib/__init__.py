"""reprolib: an executable reproduction of *Investigating the Robustness of
Subtask Distillation under Spurious Correlation* (Chormai, Müller, Montavon;
arXiv 2602.00852).

Importing the package does no work: no dataset is read, nothing is downloaded.
"""

__version__ = "0.1.0"

# Bumped whenever a change alters the numbers a run produces; part of every
# cache key and run-folder hash, so stale results are never silently reused.
CODE_VERSION = "reprolib-0.2.0"   # 0.1.1: VkD uses the Cayley map; 0.1.2: SubDistill and VID 1×1 maps
# as matmuls; 0.1.3: VID's loss averaged per channel first (both rounding-level changes);
# 0.2.0: the adequate experiment (narrow student, 600-step quick preset, validation every
# val_every epochs with the two validation sets evaluated as one union; paper world: each
# training crop drawn from its own per-image generator, digits pasted per batch on the device)

from .errors import ReproError  # noqa: E402,F401
