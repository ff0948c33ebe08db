"""The networks: backbone and heads, MIL, cell pooling, losses, checkpoints, pretrained weights."""
