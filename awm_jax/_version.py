__version__ = "0.1.0"
#: Bumped whenever a change alters cached fingerprints or scores; part of every cache key.
ALGORITHM_VERSION = "awm-gram-1"
