"""A moto-style fake of the VAST.ai REST API with a real SSH endpoint and process per instance."""

from local_emulator.vast.server import VastFake

__all__ = ["VastFake"]
