"""Media processing: frames, RTMP I/O through PyAV, transcoding, the audio mixer."""
