"""Fine-tuning: the strategies (a registry of plans), the blocks `auto` chooses, the training loop and its phases,
batches, checkpoints and data-parallel processes."""
