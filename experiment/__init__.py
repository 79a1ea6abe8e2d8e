"""What every run stands on: its experiment folder (paths, the one atomic writer, the lock) and its runtime."""
