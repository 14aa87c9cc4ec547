"""reprolib: an executable reproduction of *Investigating the Robustness of
Subtask Distillation under Spurious Correlation* (Chormai, Müller, Montavon;
arXiv 2602.00852).

Importing the package does no work: no dataset is read, nothing is downloaded.
"""

__version__ = "0.1.0"

# Bumped whenever a change alters the numbers a run produces; part of every
# cache key and run-folder hash, so stale results are never silently reused.
CODE_VERSION = "reprolib-0.1.3"   # 0.1.1: VkD uses the Cayley map; 0.1.2: SubDistill and VID 1×1 maps
# as matmuls; 0.1.3: VID's loss averaged per channel first (both rounding-level changes)

from .errors import ReproError  # noqa: E402,F401
