"""The one training loop and its parts: state, checkpoint saver, run folder, DDP, schedules."""
