"""The Python entry point of a whole training: :func:`train`."""
