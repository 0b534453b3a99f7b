"""cream_tf: Cream of the Crop (distilling prioritized paths) one-shot NAS in TensorFlow/Keras."""
from cream_tf import arch, blocks, child, flops, space, zoo
from cream_tf.arch import Arch, ArchError
from cream_tf.space import Space

__version__ = "0.1.0"
