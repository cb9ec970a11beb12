"""The platform's kernel: settings, errors, topology, connections, publishing, failure policy.

Nothing here imports Celery, ``events`` or ``rpc``; they all build on it.
"""
