"""Search drivers: they decide, the engine acts."""
