"""timewalk's GPU side: world building, rendering, timeline, codec, wire protocol and server.

Torch is imported lazily inside the modules that need it, so ``gen_server.protocol``,
``gen_server.cameras`` and ``gen_server.cli`` import with numpy/msgpack/zmq only.
"""
