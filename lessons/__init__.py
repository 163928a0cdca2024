"""The lessons' definitions, generated from the notebooks by ``python -m helpers.export``.

Each module here is the code cells tagged ``export`` of one notebook, so scripts and
tests run exactly the network and training step a reader sees. Never edit them by hand.
"""
