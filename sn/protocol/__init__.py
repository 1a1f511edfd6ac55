"""The WebSocket connection as pure code: no I/O, no awaits, nothing imported from the rest of sn.

- ``frames`` and ``handshake``: RFC 6455 framing (unmasking by websockets' C speedup when present)
  and the server side of the opening handshake;
- ``connection``: ``ConnectionState``, the state machine of one client connection: inputs in,
  one output (``data_to_send()``, the bytes for the wire) and a ``State``, as websockets' ``Protocol``;
- ``messages`` and ``encoding``: the wire messages (msgspec Structs) and their JSON frames, one
  encoding per event shared by every recipient;
- ``mailbox``: the bounded FIFO a socket's outbox is (no storage while empty); ``resync``: the verdict when a replay is
  impossible.

The adapters that do the I/O live in ``sn.realtime`` (the socket, the hub, the router); Sanic
parses the upgrade request, then hands the socket over (``sn.sanic_internals``).
"""
