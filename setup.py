"""cream_tf: Cream of the Crop one-shot NAS (distilling prioritized paths) for TensorFlow/Keras."""
from setuptools import find_packages, setup

setup(
    name="cream_tf",
    version="0.1.0",
    description="One-shot neural architecture search by distilling prioritized paths (Cream), "
                "in TensorFlow/Keras 3",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["cream_tf", "cream_tf.*"]),
    # The SavedModel README template, read with importlib.resources.
    package_data={"cream_tf.export": ["README.template.md"]},
    py_modules=["run"],
    python_requires=">=3.10",
    install_requires=[
        "tensorflow>=2.16,<2.22",
        "keras>=3.8,<4",
        "tensorflow-datasets>=4.9,<5",
        "keras-tuner>=1.4.6,<2",
        "numpy>=1.26,<3",
        "absl-py>=1.4,<3",
        # Ships the real handwritten-digits set used offline by configs/small.flags.
        "scikit-learn>=1.3,<2",
    ],
    extras_require={
        # Everything the test suite exercises: plots, the Bayesian oracle, the release's PyTorch
        # checkpoints (CPU build, pinned: an unpinned torch pulls GBs of CUDA) and ONNX.
        "test": ["pytest>=7", "pytest-xdist>=3.5", "hypothesis>=6.80", "matplotlib>=3.7", "scipy>=1.10",
                 "torch==2.13.0", "tf2onnx>=1.17,<2", "onnx>=1.17", "onnxruntime>=1.20"],
        "plots": ["matplotlib>=3.7"],
        "bayesian": ["scipy>=1.10"],
        "onnx": ["tf2onnx>=1.17,<2", "onnx>=1.17", "onnxruntime>=1.20"],
        "torch": ["torch==2.13.0"],
    },
    classifiers=[
        "Programming Language :: Python :: 3",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
