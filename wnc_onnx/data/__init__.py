"""What is fed to a model: arrays, image folders, random inputs drawn from its signature, calibration
batches."""
