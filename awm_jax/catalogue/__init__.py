"""Catalogues of known base models as compact AWM sketches, and scanning a model against them.

``sketch`` makes, writes and reads one model's sketch; ``store`` builds, verifies, publishes and
fetches a catalogue folder; ``scan`` ranks a catalogue's entries against one model
(docs/catalogue.md).
"""

__all__: list[str] = []
