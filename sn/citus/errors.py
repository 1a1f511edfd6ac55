"""The one error every cluster operation raises for a state it cannot work with.

Its own module because every layer of the package raises it (parsing an address, provisioning,
moving shards) and both front ends turn it into a message: the CLI prints it and exits 1, the
admin API answers 409.
"""

from __future__ import annotations


class ClusterError(Exception):
    """The cluster is not in a state the operation can work with; the message says what to do."""
