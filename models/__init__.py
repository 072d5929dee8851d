"""The ML models: the real reference data, the generators, their registry.

torch and diffusers are imported by the modules that need them, never by ``schemas``/``streams``.
"""
