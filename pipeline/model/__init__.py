"""The model: backbones and their blocks, the model card, the trained model file, the frozen body's features and
the test scores."""
