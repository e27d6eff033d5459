"""Small NumPy, file and JSON helpers shared by every layer of tfdnc.

This package sits at the bottom of the import graph: it imports nothing from
tfdnc (and not TensorFlow: `l2_normalize_tensor` imports Keras when called),
so any module may use it without a cycle.
"""

from tfdnc.utils.arrays import l2_normalize, l2_normalize_tensor
from tfdnc.utils.files import IMAGE_EXTENSIONS, is_image_file, list_image_files
from tfdnc.utils.jsonio import read_json, write_json

__all__ = ["IMAGE_EXTENSIONS", "is_image_file", "l2_normalize", "l2_normalize_tensor", "list_image_files", "read_json", "write_json"]
