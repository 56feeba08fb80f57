"""CLOOB training through OpenCLIP's own loop: ``python -m training.main`` (see :mod:`training.main`)."""
