"""`jcnn bench`'s parts: `models` (what is timed: the models, batch sizes, the SGD-momentum
constants), `harness` (the runners, interleaved timing, memory figures, table rows, the
environment), `torch_twins` (the same models and step in PyTorch; imports torch, which jcnn
does not depend on). The command is `jcnn.cli.bench`."""
