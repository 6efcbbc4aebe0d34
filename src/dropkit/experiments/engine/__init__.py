"""Where and how jobs run: the plan of a config's jobs in a run folder, a training function's
trial, the executors (a local process pool, SLURM through submitit) and the driver's writing of
results. Above `config` and `base`; a built-in setting's jobs reach it through
`dropkit.experiments.engine.plan.FolderJob`."""
