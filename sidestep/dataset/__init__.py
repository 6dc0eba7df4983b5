"""Dataset building: per-song metadata, clip encoding, tensor files and the training Dataset."""
