"""Test support: real protocol peers on loopback (an OpenAI-compatible server) and helpers."""
