"""The one exception the simulator raises for bad input (a trace, a flag, a cluster shape)."""


class SimInputError(ValueError):
    """Bad simulator input. The message says what was wrong and what is accepted instead."""
