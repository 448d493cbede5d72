"""GliomaProgression: preprocessing, synthetic cases, model packages and the case pipeline (pure Python).

The hub of the extension's libraries: it may use ``DSCPerfusionLib`` and ``CTVPlannerLib``. Only
``mrml.py`` talks to Slicer, and only inside its functions.
"""

__version__ = "0.1.0"
