"""Packaging for dgc_tf.

The compiled op (`custom_ops/`) is built here at install time; see
`custom_ops/README` for the flags, which are read from `tf.sysconfig`.
"""
from setuptools import find_packages, setup

setup(
    name="dgc_tf",
    version="0.1.0",
    description="Deep Gradient Compression for TensorFlow 2 / Keras",
    packages=find_packages(include=["dgc_tf", "dgc_tf.*"]),
    python_requires=">=3.10",
    install_requires=["tensorflow>=2.21,<2.22", "numpy"],
    extras_require={"legacy": ["tf-keras>=2.21,<2.22"]},
)
