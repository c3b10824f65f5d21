"""The OpenAI Batch judge: request files → batches → judge result files, exactly once.

`engine.Annotator` advances a run one step at a time (`step`, for the operator's controller
loop) or until done (`run_until_done`, for the CLI and the local run) and can `cancel`. Its
durable state is a ledger per request file in the run's storage (`ledger`); the Batch and Files
API is reached through `client.BatchClient`; token estimates (`estimate`) and the sorting of
output/error lines into results and retries (`outcomes`) are pure.
"""
