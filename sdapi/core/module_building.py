"""One thread at a time builds or loads torch modules in this process.

accelerate's `init_empty_weights` (which diffusers, transformers and PEFT enter while loading weights) and
transformers' `no_init_weights` patch torch's classes and functions for the whole process, not for the thread that
entered them. A module another thread builds meanwhile comes out on the meta device or never initialised, and two
threads entering and leaving them out of order can leave the patch in place for good, so that every later module is
empty. One process holds several loaders (an API node's upscalers and depth estimator beside its worker's engines,
several engines, the export command, the tests' in-process services), so every place that builds a module or loads
weights into a new one holds this lock; running a loaded module needs nothing."""

from __future__ import annotations

import threading

# Re-entrant: a pipeline load may build its ControlNet from the UNet, an export loads through the engine's loader.
MODULES_BUILT_ONE_AT_A_TIME = threading.RLock()
