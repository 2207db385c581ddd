"""The data: a user's class folder validated and split (class_folder), decoded into uint8 tensors (images, splits,
the decoded cache, LitData shards), the built-in datasets and the corrupted test copy."""
