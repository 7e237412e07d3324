"""Repository maintenance as restic does it: forget with retention, prune, check, stats, and the
actions run after a backup."""
