"""The numerics of the test: ``kernels`` (Grams and unbiased CKA, jitted and vmapped),
``alignment`` (embedding-column cosine and the assignment on the host), ``layer_match``
(layer pairing across depths), ``statistics`` (reference z-score and calibrated verdict)."""
