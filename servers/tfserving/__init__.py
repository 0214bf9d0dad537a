"""The TensorFlow-Serving-compatible server (REST and gRPC in one process): `python -m
servers.tfserving`; the contract is servers.tfserving.main's docstring."""
