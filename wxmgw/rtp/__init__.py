"""RTP wire code (pure: bytes <-> objects) and RTP sessions (sockets)."""
