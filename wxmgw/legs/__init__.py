"""Legs: Rtmp2rtp (mini-program -> MAS) and Rtp2rtmp (MAS -> mini-programs)."""
