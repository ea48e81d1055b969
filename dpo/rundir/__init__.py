"""The run directory: its file names and the one reader/writer of its files (files.py), crash-safe writes, the
lock that keeps one writer per directory, resuming from complete checkpoints, and secrets kept out of it all."""
