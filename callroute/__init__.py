"""The callroute front: callroutegw's JSON messages in, wxmgw Thrift calls out.

It keeps the conferences' mini-program members (SSRCs, RTMP stream names, who
watches whom), picks the wxmgw of each conference and drives it as the MCS
would. Run it with ``callroute serve`` (:mod:`callroute.cli`).
"""
