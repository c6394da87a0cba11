"""Routing: which backend serves a request, and when models are swapped (see core.py)."""

from llamaswap.router.core import RouterError
from llamaswap.router.loop import Grant, Router, Ticket
from llamaswap.router.peers import PeerDirectory

__all__ = ["Router", "RouterError", "Grant", "Ticket", "PeerDirectory"]
