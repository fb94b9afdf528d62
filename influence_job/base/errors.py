"""Errors a user can fix. The CLI prints their message as one paragraph and exits with code 2."""


class InputError(Exception):
    """Bad input, configuration or environment: the message names the problem and the fix."""


class DistributedError(Exception):
    """A collective across ranks failed (a peer died or timed out): the message names the rank and step."""
