"""Training: the shared CLI and machinery (mesh, checkpoints, logging) and the ReSeND trainer."""
