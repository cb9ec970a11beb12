"""Operations: the kitty-tasks CLI, DLQ console and replay, health, exporter, Flower, demo."""
