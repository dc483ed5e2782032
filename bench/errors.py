"""User mistakes. The CLI prints str(error) as one line on stderr and exits with code 2."""


class BenchError(Exception):
    """A mistake in the user's input (config, files, flags), as opposed to a bug."""


class ConfigError(BenchError, ValueError):
    """A bad config value; ``key`` is its dotted path, e.g. ``train.resolution.min_side``."""

    def __init__(self, key: str, message: str):
        self.key, self.message = key, message
        super().__init__(f"{key}: {message}")

    def under(self, parent: str) -> "ConfigError":
        """The same error with its key prefixed by the enclosing section."""
        return ConfigError(f"{parent}.{self.key}" if parent else self.key, self.message)


class DataError(BenchError):
    """A dataset that cannot be used (missing folder, no readable images...)."""
