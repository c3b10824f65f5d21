"""synthpref: the data stages of the preference pipeline, the spec models and the CLI."""
