"""The backup and restore flows: a driver's dump into a snapshot, a snapshot into a driver."""
