"""The built-in laboratory: datasets (MNIST-1D, digits, a user's ``.npz``), the models, population
training of a variant's seeds at once, their keyed random streams, the dynamics probes, and the
demo configs. Above `config` and `base`; the engine runs its jobs without importing it."""
