"""AIoD: segmentation of very large microscopy images, substack by substack.

Every `bin/` entry script of the pipeline imports this package; it is found because Python
puts the running script's directory (`bin/`) first on `sys.path`.
"""

__version__ = "0.1.0"

# Bump when the bytes of a result can change for the same inputs (merge rule, output layout,
# dtype policy): it is part of every cache key, so old results are never served as new ones.
RESULT_FORMAT_VERSION = 1
