"""memsvc: chat memory for LLM gateways, over HTTP."""

__version__ = '0.1.0'
