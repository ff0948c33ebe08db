"""Training data: datasets, augmentation, S4.1's crop files, S1's downloads."""
