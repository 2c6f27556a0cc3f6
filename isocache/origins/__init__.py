"""Origin backends: where image bytes come from.

Only modules in this package import origin client libraries.
"""
