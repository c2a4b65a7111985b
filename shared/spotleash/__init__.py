"""spotleash: rent cheap cloud compute when RAM runs short, and never leave it running by mistake."""

__version__ = "0.1.0"
