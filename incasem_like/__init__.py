"""incasem-like: organelle segmentation of whole-cell volume EM, end to end."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("incasem-like")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"
