"""Typed errors. Everything a user can get wrong raises a ``ConfigError`` subclass; the CLI turns it into one line
and exit code 2."""

from __future__ import annotations


class FedUnlearnError(Exception):
    """Base class of every error fedunlearn raises on purpose."""


class ConfigError(FedUnlearnError):
    """Bad user input: a config key or value, a dataset path, a client id, a method name."""


class DataError(ConfigError):
    """A dataset cannot be loaded (missing files, wrong arrays)."""


class PrivacyViolation(FedUnlearnError):
    """A withdrawn client's data was requested after its withdrawal window closed."""


class NumericalError(FedUnlearnError):
    """Training diverged: a loss or the weights became NaN or infinite (a learning rate too high)."""


class PhaseFailed(FedUnlearnError):
    """An FL phase could not finish (too many clients failed in a round)."""
