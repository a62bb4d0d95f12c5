"""Small real data sets that ship inside installed packages (no download at run time)."""

from __future__ import annotations


def digits_frame():
    """scikit-learn's digits as a pandas DataFrame: ``features`` (64 pixels scaled to [0, 1],
    float32 arrays) and ``label`` (int64, 10 classes); 1,797 rows."""
    import numpy as np
    import pandas as pd
    from sklearn.datasets import load_digits

    digits = load_digits()
    pixels = (digits.data / 16.0).astype(np.float32)
    return pd.DataFrame({"features": list(pixels), "label": digits.target.astype(np.int64)})
