"""The operator console: health, queue depths, topology drift and DLQ triage in a browser."""
