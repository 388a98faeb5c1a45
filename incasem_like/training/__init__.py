"""Training and fine-tuning: configs, the gunpowder sampling graph, losses and the training loop."""
