"""exec-server: a JSON-RPC server that starts and controls processes for remote clients."""

__version__ = "0.1.0"
