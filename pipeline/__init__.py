"""The pipeline's core (configs, the stage contract, the run store, models, trainer scaffolding)
and its front end (runner, CLI, reports); the layers are in ``docs/architecture.md``."""
