"""The package version, in a module of its own so that any layer can name it without importing the package root
(whose lazy public names reach the client and the engine)."""

__version__ = "0.1.0"
