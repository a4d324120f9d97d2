"""Operations: the background worker, backup and restore."""
