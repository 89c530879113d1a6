"""tierlm: answer every query with the cheapest tier that answers it well enough."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("tierlm")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"
