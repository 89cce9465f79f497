"""Training: `step` (the jit-compiled, data-parallel train and eval steps, `TrainState`),
`data` (the datasets and the batch iterator), `parallel` (the device mesh and shardings),
`checkpoint` (save and restore a pytree with its run's config), `atomic` (files written whole
or not at all), `plots` (learning curves and first-layer filters; imports matplotlib). The
`jcnn train` command is `jcnn.cli.train`.

Nothing is imported here, so that `jcnn.train.data` or `jcnn.train.atomic` loads neither optax
nor matplotlib: import the module you need, e.g. `from jcnn.train.step import make_train_step`.
"""
