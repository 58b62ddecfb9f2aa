"""RTMP, the protocol between the gateway and the live server (Adobe RTMP 1.0, 2012).

Wire code apart from the connection, as mediamtx splits
``internal/protocols/rtmp/{chunk,message,amf0}`` from its ``conn.go``:

* :mod:`~wxmgw.rtmp.chunk`: messages to chunks and back, and the
  :class:`~wxmgw.rtmp.chunk.RtmpLimits` that bound what a peer makes us hold;
* :mod:`~wxmgw.rtmp.amf0`: the values commands and data messages are made of;
* :mod:`~wxmgw.rtmp.commands`: ``connect``, ``createStream``, ``play``,
  ``publish`` built, ``_result``/``_error``/``onStatus`` read;
* :mod:`~wxmgw.rtmp.flv`: the FLV tag bodies audio, video and data messages
  carry, parsed and built;
* :mod:`~wxmgw.rtmp.url`: ``rtmp[s]://`` URLs as FFmpeg splits them.

Those are pure: bytes in, objects out and back, no sockets, no gevent, no
logging; errors are :class:`~wxmgw.errors.ParseError`. Only
:mod:`~wxmgw.rtmp.client` does I/O: the session on a gevent socket (and TLS).
Nothing is imported here, so the pure modules never pull gevent in.
"""
