"""Test support: real protocol peers on loopback (an OpenAI-compatible server, moto's S3 server
and a fault-injecting proxy in front of it) and helpers."""
