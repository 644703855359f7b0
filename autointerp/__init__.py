"""autointerp: explain the MLP neurons of transformer language models automatically.

The pipeline runs corpus -> harvest -> n2g -> explain -> score -> search/rank -> api, with all
results in one SQLite store (see :mod:`autointerp.store`).
"""

__version__ = "0.1.0"
