"""Thin transports: they move whole JSON messages between a peer and a Connection."""
