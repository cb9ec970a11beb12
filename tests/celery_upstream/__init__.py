"""Celery's own integration tests, run against the platform's task class, consumer and settings."""
