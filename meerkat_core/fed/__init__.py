"""Federated sparse ZO: messages, client, server, in-process simulator, run directory, checkpoints."""
