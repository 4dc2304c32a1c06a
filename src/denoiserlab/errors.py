"""The one exception type denoiserlab raises for bad input, with a one-line message naming the problem."""


class DenoiserLabError(ValueError):
    """Bad input to denoiserlab: wrong shapes, NaN, sigma <= 0, unreadable files, empty datasets, ..."""
