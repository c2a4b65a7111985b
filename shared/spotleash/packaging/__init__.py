"""An app and its package: ``spotleash.toml``, the app tree, wheels, publishing, the launch's pin."""
