"""The WebSocket protocol itself (RFC 6455), sans-I/O: the opening handshake and framing.

Sanic parses the upgrade request and authenticates it; from the 101 on, sockets are served by
``sn.actors.socket.SocketActor`` with these modules, not by Sanic's WebSocket implementation,
whose per-socket tasks and queues cost more memory than the rest of a connection together.
"""
