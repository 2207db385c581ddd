"""The DVC stages, one module each (what dvc.yaml runs): builtin, prepare, verdict, train, evaluate, export.
Each is thin: it reads params.yaml, calls the library packages beside it and writes its declared outputs."""
