"""The Celery runtime: the app, the task base, the worker consumer, result backend, TaskQueue."""
